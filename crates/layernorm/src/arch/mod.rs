//! The only place with intrinsics: instruction-set tokens and the vector operations the
//! kernels are written in.
//!
//! A token (`Avx2`, `Avx512`, …) can only be created by detection, so holding one proves the
//! CPU has the features; [`Isa`] carries the token, and [`Isa::vectorize`] runs a kernel
//! compiled for it. Kernels are written once, generic over [`Simd`]; the scalar token
//! implements the same operations on plain arrays, so every ISA runs the same algorithm.
//!
//! Detection runs once and is cached. `LAYERNORM_ISA=scalar|avx2|avx512|avx512bf16|neon`
//! forces a lower instruction set (a request for one the CPU lacks falls back to the best it
//! has).

#![allow(unsafe_code)]

#[cfg(target_arch = "aarch64")]
mod aarch64;
mod alloc;
mod scalar;
#[cfg(target_arch = "x86_64")]
mod x86_64;

use std::fmt;
use std::sync::OnceLock;

use half::{bf16, f16};

pub(crate) use alloc::filled_vec;
pub(crate) use scalar::Scalar;

/// The vector operations kernels are written in: f32 vectors of `LANES` lanes for arithmetic,
/// f64 vectors of `LANES / 2` lanes for accumulation. Loads and stores take slices of at least
/// `LANES` elements and touch exactly the first `LANES`.
pub trait Simd: Copy + Send + Sync + 'static {
    /// f32 lanes per vector.
    const LANES: usize;
    /// A vector of `LANES` f32.
    type F32: Copy;
    /// A vector of `LANES / 2` f64.
    type F64: Copy;

    fn splat(self, v: f32) -> Self::F32;
    fn add(self, a: Self::F32, b: Self::F32) -> Self::F32;
    fn sub(self, a: Self::F32, b: Self::F32) -> Self::F32;
    fn mul(self, a: Self::F32, b: Self::F32) -> Self::F32;
    /// `a·b + c` (fused where the ISA has FMA).
    fn mul_add(self, a: Self::F32, b: Self::F32, c: Self::F32) -> Self::F32;

    fn splat64(self, v: f64) -> Self::F64;
    fn add64(self, a: Self::F64, b: Self::F64) -> Self::F64;
    fn sub64(self, a: Self::F64, b: Self::F64) -> Self::F64;
    fn mul64(self, a: Self::F64, b: Self::F64) -> Self::F64;
    /// `a·b + c` in f64.
    fn mul_add64(self, a: Self::F64, b: Self::F64, c: Self::F64) -> Self::F64;
    /// The low and high halves of an f32 vector, widened to f64 (exact).
    fn widen(self, v: Self::F32) -> [Self::F64; 2];
    /// The sum of the lanes, in a fixed order.
    fn reduce64(self, v: Self::F64) -> f64;

    /// Loads `LANES / 2` f64.
    fn load_f64(self, src: &[f64]) -> Self::F64;
    /// Stores `LANES / 2` f64.
    fn store_f64(self, dst: &mut [f64], v: Self::F64);
    /// `LANES` f64 (`a`'s lanes, then `b`'s) narrowed to f32 by rounding to odd (see
    /// [`crate::dtype::f64_to_f32_round_odd`], which this default runs lane by lane): the
    /// step before a 16-bit type that keeps a single rounding from f64.
    #[inline(always)]
    fn narrow_odd(self, [a, b]: [Self::F64; 2]) -> Self::F32 {
        let (n, half) = (Self::LANES, Self::LANES / 2);
        let mut wide = [0.0f64; 16];
        self.store_f64(&mut wide[..half], a);
        self.store_f64(&mut wide[half..n], b);
        let mut out = [0.0f32; 16];
        for (o, &w) in out[..n].iter_mut().zip(&wide[..n]) {
            *o = crate::dtype::f64_to_f32_round_odd(w);
        }
        self.load_f32(&out[..n])
    }
    fn load_f32(self, src: &[f32]) -> Self::F32;
    /// `LANES` f32 loaded and widened as [`Simd::widen`] widens them; where the conversion
    /// can read memory itself (x86: one `vcvtps2pd` per half, without the shuffle that
    /// splits a register).
    #[inline(always)]
    fn load_f32_wide(self, src: &[f32]) -> [Self::F64; 2] {
        self.widen(self.load_f32(src))
    }
    fn store_f32(self, dst: &mut [f32], v: Self::F32);
    /// Stores `LANES` f32 bypassing the caches (a non-temporal store) when `dst` is aligned
    /// to the vector size, with a plain store otherwise. Call [`Simd::fence`] before the data
    /// is read by another thread.
    #[inline(always)]
    fn stream_f32(self, dst: &mut [f32], v: Self::F32) {
        self.store_f32(dst, v)
    }
    /// Orders earlier non-temporal stores before later stores.
    #[inline(always)]
    fn fence(self) {}
    fn load_f16(self, src: &[f16]) -> Self::F32;
    /// Rounds to nearest even.
    fn store_f16(self, dst: &mut [f16], v: Self::F32);
    /// [`Simd::store_f16`], non-temporal where `dst` is aligned to `LANES` f16 (as
    /// [`Simd::stream_f32`]).
    #[inline(always)]
    fn stream_f16(self, dst: &mut [f16], v: Self::F32) {
        self.store_f16(dst, v)
    }
    fn load_bf16(self, src: &[bf16]) -> Self::F32;
    /// `LANES` bf16 widened to f64 (exact), as [`Simd::widen`] widens [`Simd::load_bf16`]'s
    /// vector; where the ISA can split them before widening.
    #[inline(always)]
    fn load_bf16_wide(self, src: &[bf16]) -> [Self::F64; 2] {
        self.widen(self.load_bf16(src))
    }
    /// `LANES` bf16 widened to f64 (exact), their order among the lanes of the two vectors
    /// left to the ISA (the same on every call): for sums, where only which values are added
    /// matters. x86 widens with unpacks against zero instead of a zero-extension and a shift:
    /// on Zen 4, the shift and the shuffle that splits a register share the add pipes with
    /// the conversions to f64 and the sums themselves. (By default, and on AVX2, whose
    /// 128-bit unpacks keep the order anyway: [`Simd::load_bf16_wide`].)
    #[inline(always)]
    fn load_bf16_wide_unordered(self, src: &[bf16]) -> [Self::F64; 2] {
        self.load_bf16_wide(src)
    }
    /// Rounds to nearest even; NaN stays NaN.
    fn store_bf16(self, dst: &mut [bf16], v: Self::F32);
    /// [`Simd::store_bf16`], non-temporal where `dst` is aligned to `LANES` bf16 (as
    /// [`Simd::stream_f32`]).
    #[inline(always)]
    fn stream_bf16(self, dst: &mut [bf16], v: Self::F32) {
        self.store_bf16(dst, v)
    }
    /// Two vectors to `dst[..2·LANES]` as [`Simd::store_bf16`] stores each (the same bits);
    /// where narrowing two at once is cheaper than one by one.
    #[inline(always)]
    fn store_bf16x2(self, dst: &mut [bf16], [a, b]: [Self::F32; 2]) {
        self.store_bf16(dst, a);
        self.store_bf16(&mut dst[Self::LANES..], b);
    }
    /// [`Simd::store_bf16x2`] with the stores of [`Simd::stream_bf16`].
    #[inline(always)]
    fn stream_bf16x2(self, dst: &mut [bf16], [a, b]: [Self::F32; 2]) {
        self.stream_bf16(dst, a);
        self.stream_bf16(&mut dst[Self::LANES..], b);
    }
}

/// Whether an output like `out` (of forward, or of backward) is written with non-temporal
/// stores.
///
/// f32 outputs larger than the cache this process can count on are: they could not stay in
/// cache anyway, would only evict the inputs, and skipping the read-for-ownership saves a
/// third of the memory traffic. That cache is the last-level cache from sysfs (32 MiB where
/// it cannot be read), but at most 8 MiB per core: in a VM, Linux reports the host's whole
/// LLC (260 MiB on the 2-core machines here), shared with every other tenant. Measured there
/// (`layernorm bench --threads 2`, f32 forward, non-temporal against plain stores): 4 MiB
/// outputs 0.45 against 0.53 of copy, 16 MiB 0.56–0.60 against 0.55, 32–64 MiB 0.79 against
/// 0.62.
///
/// 16-bit outputs are only where their kernel runs close enough to the memory's speed for
/// the saved traffic to count: bf16 forward (since its loads widen with unpacks: 0.84 of
/// copy in L2 at 4096²). 2 threads, plain against non-temporal, A/B medians of 5–6: bf16
/// forward 4096² 0.57–0.62 → 0.71–0.74 of copy (24–25 → 30–31 GB/s), 1024×65536 0.74–0.75 →
/// 0.87; bf16 backward 4096² 0.41 → 0.34 (not streamed); f16 forward, whose kernel runs at
/// its in-cache speed from memory already, alike within noise (4096² 0.57 / 0.53 of copy, 25
/// / 29 GB/s; not streamed). Earlier, with slower bf16 loads, plain stores had won
/// everywhere (bf16 4096² forward 0.57–0.59 against 0.47–0.55).
///
/// `LAYERNORM_STREAM_MIN_BYTES` sets the threshold for every type and pass, for tests and
/// measurements.
pub(crate) fn stream_output<T: Storage>(out: &[T], forward: bool) -> bool {
    let eligible = if forward {
        T::STREAMS_FORWARD
    } else {
        std::mem::size_of::<T>() >= 4
    };
    let bytes = std::mem::size_of_val(out);
    streams(eligible, bytes, *STREAM_MIN_BYTES_ENV, || *STREAM_MIN_BYTES)
}

/// [`stream_output`]'s rule for `bytes` of an output that streams by default when large
/// (`eligible`), given the environment's threshold and the default one.
fn streams(eligible: bool, bytes: usize, env: Option<usize>, default: impl Fn() -> usize) -> bool {
    match env {
        Some(min) => bytes >= min,
        None => eligible && bytes >= default(),
    }
}

/// `LAYERNORM_STREAM_MIN_BYTES`, when set (see [`stream_output`]).
static STREAM_MIN_BYTES_ENV: std::sync::LazyLock<Option<usize>> = std::sync::LazyLock::new(|| {
    std::env::var("LAYERNORM_STREAM_MIN_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
});

/// The smallest f32 output written with non-temporal stores (see [`stream_output`]).
static STREAM_MIN_BYTES: std::sync::LazyLock<usize> = std::sync::LazyLock::new(|| {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let llc = last_level_cache_bytes().unwrap_or(32 << 20);
    llc.min(cores.saturating_mul(8 << 20))
});

/// The size of the highest-level data cache, as Linux reports it ("260M", "32768K").
fn last_level_cache_bytes() -> Option<usize> {
    let dir = std::fs::read_dir("/sys/devices/system/cpu/cpu0/cache").ok()?;
    dir.filter_map(|entry| {
        let path = entry.ok()?.path();
        let read = |name: &str| std::fs::read_to_string(path.join(name)).ok();
        let level: u32 = read("level")?.trim().parse().ok()?;
        if read("type")?.trim() == "Instruction" {
            return None;
        }
        let size = read("size")?;
        let size = size.trim();
        let (digits, unit) = size.split_at(size.find(|c: char| !c.is_ascii_digit())?);
        let scale = match unit {
            "K" => 1 << 10,
            "M" => 1 << 20,
            "G" => 1 << 30,
            _ => return None,
        };
        Some((level, digits.parse::<usize>().ok()? * scale))
    })
    .max()
    .map(|(_, bytes)| bytes)
}

/// `dst.copy_from_slice(src)` with non-temporal stores where the CPU has them (x86-64), a plain
/// copy elsewhere (the public face is [`crate::copy_streaming`]).
///
/// # Panics
/// If the lengths differ.
pub(crate) fn stream_copy<T: Storage>(src: &[T], dst: &mut [T]) {
    assert_eq!(src.len(), dst.len(), "copy_streaming: lengths differ");
    #[cfg(target_arch = "x86_64")]
    {
        let bytes = std::mem::size_of_val(src);
        // SAFETY: `Storage` is private to the crate and implemented for f32, f64, f16 and bf16
        // only: plain numbers without padding, so every byte of `src` is initialized, and
        // every bit pattern written into `dst` is a valid value. Both views cover exactly
        // their slice and live no longer than it.
        let (s, d) = unsafe {
            (
                std::slice::from_raw_parts(src.as_ptr().cast::<u8>(), bytes),
                std::slice::from_raw_parts_mut(dst.as_mut_ptr().cast::<u8>(), bytes),
            )
        };
        x86_64::stream_copy_bytes(s, d);
    }
    #[cfg(not(target_arch = "x86_64"))]
    dst.copy_from_slice(src);
}

/// Asks the CPU to start loading into L1 the cache lines that begin inside `data[range]`,
/// and the line holding `data[0]` when the range starts the slice (a hint: it never faults
/// and may be ignored; the range is clamped to the slice). A reader that walks a slice in
/// consecutive ranges thus asks for each line once.
#[inline(always)]
pub(crate) fn prefetch<T>(data: &[T], range: std::ops::Range<usize>) {
    #[cfg(target_arch = "x86_64")]
    for offset in line_offsets(
        data.as_ptr() as usize,
        std::mem::size_of::<T>(),
        data.len(),
        range,
    ) {
        // SAFETY: `line_offsets` yields byte offsets below `size_of_val(data)`: the address
        // lies inside `data`. Prefetch needs only SSE, part of the x86-64 baseline, and never
        // faults.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                data.as_ptr().cast::<i8>().add(offset),
            )
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (data, range);
}

/// Asks the CPU to start loading into L1 the cache line that holds `data[i]` (a hint: it
/// never faults and may be ignored; nothing is asked for past the slice). For a reader that
/// moves a fixed number of bytes per step: one request per step, no line arithmetic.
#[inline(always)]
pub(crate) fn prefetch_line<T>(data: &[T], i: usize) {
    #[cfg(target_arch = "x86_64")]
    if let Some(v) = data.get(i) {
        // SAFETY: the address is that of an element of `data`. Prefetch needs only SSE, part
        // of the x86-64 baseline, and never faults.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                std::ptr::from_ref(v).cast::<i8>(),
            )
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (data, i);
}

/// Asks the CPU to start loading the cache line that holds `data[i]` for writing (`prefetchw`,
/// so that a store to it finds the line owned; a hint, as [`prefetch_line`]; CPUs without
/// the instruction run it as a no-op).
#[inline(always)]
pub(crate) fn prefetch_line_for_write<T>(data: &[T], i: usize) {
    #[cfg(target_arch = "x86_64")]
    if let Some(v) = data.get(i) {
        // SAFETY: the address is that of an element of `data`; a prefetch reads and writes
        // nothing, never faults, and touches no register but its address operand. (Inline
        // assembly: the intrinsic's write hint becomes a plain `prefetcht0` unless the
        // calling function enables `prfchw`.) `prefetchw` (0F 0D /1) is a no-op on the x86-64
        // CPUs that lack it.
        unsafe {
            std::arch::asm!(
                "prefetchw [{p}]",
                p = in(reg) std::ptr::from_ref(v),
                options(nostack, preserves_flags, readonly)
            )
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (data, i);
}

/// The byte offsets, from `base`, of the lines [`prefetch`] asks for: of a slice at address
/// `base` holding `len` elements of `size` bytes, the 64-byte lines that begin inside
/// elements `range` (clamped to the slice), and `base` itself when the range starts at 0.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
#[inline(always)]
fn line_offsets(
    base: usize,
    size: usize,
    len: usize,
    range: std::ops::Range<usize>,
) -> impl Iterator<Item = usize> {
    const LINE: usize = 64;
    let end = base + range.end.min(len) * size;
    let first = if range.start == 0 {
        base
    } else {
        (base + range.start * size).next_multiple_of(LINE)
    };
    std::iter::successors(Some(first), |&line| Some((line / LINE + 1) * LINE))
        .take_while(move |&line| line < end)
        .map(move |line| line - base)
}

/// A storage type with vector loads and stores: f32, f16 and bf16 (all computed in f32).
pub trait Storage: Copy + Default + Send + Sync + 'static {
    /// Whether a large forward output of this type is written with non-temporal stores (see
    /// [`stream_output`]).
    const STREAMS_FORWARD: bool = std::mem::size_of::<Self>() >= 4;
    fn load<S: Simd>(simd: S, src: &[Self]) -> S::F32;
    fn store<S: Simd>(simd: S, dst: &mut [Self], v: S::F32);
    /// `LANES` values loaded and widened to f64 (see [`Simd::load_f32_wide`]).
    #[inline(always)]
    fn load_wide<S: Simd>(simd: S, src: &[Self]) -> [S::F64; 2] {
        simd.widen(Self::load(simd, src))
    }
    /// [`Storage::load_wide`], the values in an order among the lanes of the ISA's choosing
    /// (the same on every call; see [`Simd::load_bf16_wide_unordered`]): for sums.
    #[inline(always)]
    fn load_wide_unordered<S: Simd>(simd: S, src: &[Self]) -> [S::F64; 2] {
        Self::load_wide(simd, src)
    }
    /// Runs `w` (a kernel on this type) with the AVX512_BF16 token where that changes the
    /// code, bf16 (its stores narrow with the BF16 instructions), and with plain AVX-512
    /// otherwise: the same code, compiled once instead of twice.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn vectorize_avx512_bf16<W: WithSimd>(t: x86_64::Avx512Bf16, w: W) -> W::Output {
        t.without_bf16().vectorize(w)
    }
    /// A store that may bypass the caches (see [`Simd::stream_f32`]).
    #[inline(always)]
    fn stream<S: Simd>(simd: S, dst: &mut [Self], v: S::F32) {
        Self::store(simd, dst, v)
    }
    /// Two vectors to `dst[..2·LANES]`: the same bits as two [`Storage::store`]s (or
    /// [`Storage::stream`]s, with `NT`).
    #[inline(always)]
    fn store2<S: Simd, const NT: bool>(simd: S, dst: &mut [Self], [a, b]: [S::F32; 2]) {
        if NT {
            Self::stream(simd, dst, a);
            Self::stream(simd, &mut dst[S::LANES..], b);
        } else {
            Self::store(simd, dst, a);
            Self::store(simd, &mut dst[S::LANES..], b);
        }
    }
}

impl Storage for f32 {
    #[inline(always)]
    fn load<S: Simd>(simd: S, src: &[f32]) -> S::F32 {
        simd.load_f32(src)
    }
    #[inline(always)]
    fn store<S: Simd>(simd: S, dst: &mut [f32], v: S::F32) {
        simd.store_f32(dst, v)
    }
    #[inline(always)]
    fn load_wide<S: Simd>(simd: S, src: &[f32]) -> [S::F64; 2] {
        simd.load_f32_wide(src)
    }
    #[inline(always)]
    fn stream<S: Simd>(simd: S, dst: &mut [f32], v: S::F32) {
        simd.stream_f32(dst, v)
    }
}

/// f64 parameters never reach the vector kernels (f64 data runs the portable kernel), but the
/// trait is total over element types: lane by lane through f32, rounding to nearest.
impl Storage for f64 {
    #[inline(always)]
    fn load<S: Simd>(simd: S, src: &[f64]) -> S::F32 {
        let mut lanes = [0.0f32; 16];
        for (l, &v) in lanes.iter_mut().zip(&src[..S::LANES]) {
            *l = v as f32;
        }
        simd.load_f32(&lanes)
    }
    #[inline(always)]
    fn store<S: Simd>(simd: S, dst: &mut [f64], v: S::F32) {
        let mut lanes = [0.0f32; 16];
        simd.store_f32(&mut lanes, v);
        for (d, &l) in dst[..S::LANES].iter_mut().zip(&lanes) {
            *d = f64::from(l);
        }
    }
}

impl Storage for f16 {
    #[inline(always)]
    fn load<S: Simd>(simd: S, src: &[f16]) -> S::F32 {
        simd.load_f16(src)
    }
    #[inline(always)]
    fn store<S: Simd>(simd: S, dst: &mut [f16], v: S::F32) {
        simd.store_f16(dst, v)
    }
    #[inline(always)]
    fn stream<S: Simd>(simd: S, dst: &mut [f16], v: S::F32) {
        simd.stream_f16(dst, v)
    }
}

impl Storage for bf16 {
    const STREAMS_FORWARD: bool = true;
    #[inline(always)]
    fn load<S: Simd>(simd: S, src: &[bf16]) -> S::F32 {
        simd.load_bf16(src)
    }
    #[inline(always)]
    fn load_wide<S: Simd>(simd: S, src: &[bf16]) -> [S::F64; 2] {
        simd.load_bf16_wide(src)
    }
    #[inline(always)]
    fn load_wide_unordered<S: Simd>(simd: S, src: &[bf16]) -> [S::F64; 2] {
        simd.load_bf16_wide_unordered(src)
    }
    #[inline(always)]
    fn store<S: Simd>(simd: S, dst: &mut [bf16], v: S::F32) {
        simd.store_bf16(dst, v)
    }
    #[inline(always)]
    fn stream<S: Simd>(simd: S, dst: &mut [bf16], v: S::F32) {
        simd.stream_bf16(dst, v)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn vectorize_avx512_bf16<W: WithSimd>(t: x86_64::Avx512Bf16, w: W) -> W::Output {
        t.vectorize(w)
    }
    #[inline(always)]
    fn store2<S: Simd, const NT: bool>(simd: S, dst: &mut [bf16], v: [S::F32; 2]) {
        if NT {
            simd.stream_bf16x2(dst, v)
        } else {
            simd.store_bf16x2(dst, v)
        }
    }
}

/// A computation to run with the best vector instructions: [`Isa::vectorize`] calls
/// `with_simd` inside a function compiled for the ISA's features, where the generic kernel
/// (all `#[inline(always)]`) is inlined.
pub trait WithSimd {
    type Output;
    /// The element type the computation stores (it decides whether AVX512_BF16 matters, see
    /// [`Storage::vectorize_avx512_bf16`]).
    type Elem: Storage;
    fn with_simd<S: Simd>(self, simd: S) -> Self::Output;
}

/// The instruction sets there are kernels for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum IsaKind {
    /// Portable code on plain arrays (the compiler may still use SSE2/NEON for it).
    Scalar,
    /// x86-64 AVX2 with FMA and F16C: 8 f32 lanes.
    Avx2,
    /// x86-64 AVX-512 (F, BW, VL, DQ): 16 f32 lanes.
    Avx512,
    /// [`IsaKind::Avx512`] with AVX512_BF16, whose instructions narrow f32 to bf16.
    Avx512Bf16,
    /// aarch64 NEON: 4 f32 lanes.
    Neon,
}

impl IsaKind {
    /// Lower-case name, as `LAYERNORM_ISA` takes it.
    pub fn name(self) -> &'static str {
        match self {
            IsaKind::Scalar => "scalar",
            IsaKind::Avx2 => "avx2",
            IsaKind::Avx512 => "avx512",
            IsaKind::Avx512Bf16 => "avx512bf16",
            IsaKind::Neon => "neon",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [
            IsaKind::Scalar,
            IsaKind::Avx2,
            IsaKind::Avx512,
            IsaKind::Avx512Bf16,
            IsaKind::Neon,
        ]
        .into_iter()
        .find(|k| k.name().eq_ignore_ascii_case(s.trim()))
    }
}

impl fmt::Display for IsaKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A detected instruction set, holding the token that proves it (crate-internal: the
/// module is private).
#[derive(Clone, Copy, Debug)]
pub enum Isa {
    Scalar(Scalar),
    #[cfg(target_arch = "x86_64")]
    Avx2(x86_64::Avx2),
    #[cfg(target_arch = "x86_64")]
    Avx512(x86_64::Avx512<false>),
    #[cfg(target_arch = "x86_64")]
    Avx512Bf16(x86_64::Avx512Bf16),
    #[cfg(target_arch = "aarch64")]
    Neon(aarch64::Neon),
}

impl Isa {
    pub(crate) fn kind(self) -> IsaKind {
        match self {
            Isa::Scalar(_) => IsaKind::Scalar,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2(_) => IsaKind::Avx2,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512(_) => IsaKind::Avx512,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Bf16(_) => IsaKind::Avx512Bf16,
            #[cfg(target_arch = "aarch64")]
            Isa::Neon(_) => IsaKind::Neon,
        }
    }

    /// Runs `w` with this instruction set.
    #[inline]
    pub(crate) fn vectorize<W: WithSimd>(self, w: W) -> W::Output {
        match self {
            Isa::Scalar(s) => w.with_simd(s),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2(t) => t.vectorize(w),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512(t) => t.vectorize(w),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Bf16(t) => W::Elem::vectorize_avx512_bf16(t, w),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon(t) => t.vectorize(w),
        }
    }

    /// Every instruction set this CPU supports, best last.
    pub(crate) fn available() -> Vec<Isa> {
        #[allow(unused_mut)]
        let mut out = vec![Isa::Scalar(Scalar)];
        #[cfg(target_arch = "x86_64")]
        {
            out.extend(x86_64::Avx2::try_new().map(Isa::Avx2));
            out.extend(x86_64::Avx512::try_new().map(Isa::Avx512));
            out.extend(x86_64::Avx512Bf16::try_new().map(Isa::Avx512Bf16));
        }
        #[cfg(target_arch = "aarch64")]
        out.extend(aarch64::Neon::try_new().map(Isa::Neon));
        out
    }
}

/// What detection found and chose.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuInfo {
    /// The instruction set the kernels use.
    pub selected: IsaKind,
    /// Every instruction set this CPU supports.
    pub available: Vec<IsaKind>,
    /// The CPU features detection looked at, with whether each is present.
    pub features: Vec<(&'static str, bool)>,
    /// The value of `LAYERNORM_ISA`, if set.
    pub requested: Option<String>,
}

struct Selection {
    isa: Isa,
    info: CpuInfo,
}

fn selection() -> &'static Selection {
    static SELECTION: OnceLock<Selection> = OnceLock::new();
    SELECTION.get_or_init(|| {
        let available = Isa::available();
        let requested = std::env::var("LAYERNORM_ISA").ok();
        let wanted = requested.as_deref().and_then(IsaKind::parse);
        // The best available ISA not above the request (unknown requests are ignored).
        let isa = available
            .iter()
            .rev()
            .copied()
            .find(|isa| wanted.is_none_or(|w| isa.kind() <= w))
            .unwrap_or(Isa::Scalar(Scalar));
        let info = CpuInfo {
            selected: isa.kind(),
            available: available.iter().map(|i| i.kind()).collect(),
            features: features(),
            requested,
        };
        Selection { isa, info }
    })
}

thread_local! {
    static OVERRIDE: std::cell::Cell<Option<Isa>> = const { std::cell::Cell::new(None) };
}

/// The instruction set kernels run with: detected once and cached, unless [`with_isa`] is
/// overriding it on this thread.
pub(crate) fn active() -> Isa {
    OVERRIDE.with(|o| o.get()).unwrap_or(selection().isa)
}

/// Runs `f` with the kernels forced to `kind` on this thread (and on the pool threads its
/// calls split work onto), for tests and benchmarks that compare instruction sets. Returns
/// `None`, without running `f`, if the CPU lacks `kind`.
pub fn with_isa<R>(kind: IsaKind, f: impl FnOnce() -> R) -> Option<R> {
    let isa = Isa::available().into_iter().find(|i| i.kind() == kind)?;
    let previous = OVERRIDE.with(|o| o.replace(Some(isa)));
    // Restore the previous choice even if `f` panics.
    struct Restore(Option<Isa>);
    impl Drop for Restore {
        fn drop(&mut self) {
            OVERRIDE.with(|o| o.set(self.0));
        }
    }
    let _restore = Restore(previous);
    Some(f())
}

/// What CPU detection found and which instruction set the kernels use.
pub fn cpu_info() -> CpuInfo {
    selection().info.clone()
}

fn features() -> Vec<(&'static str, bool)> {
    #[cfg(target_arch = "x86_64")]
    {
        x86_64::features()
    }
    #[cfg(target_arch = "aarch64")]
    {
        vec![("neon", std::arch::is_aarch64_feature_detected!("neon"))]
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        vec![]
    }
}

#[cfg(test)]
mod tests {
    use super::prefetch_line_for_write;
    use super::stream_copy as copy_streaming;
    use half::f16;

    #[test]
    fn copy_streaming_copies_every_offset_and_length() {
        let src: Vec<f32> = (0..300).map(|i| i as f32 * 0.5 - 7.0).collect();
        let half: Vec<f16> = src.iter().map(|&v| f16::from_f32(v)).collect();
        for offset in 0..17 {
            for len in [0, 1, 3, 15, 16, 17, 63, 64, 65, 200] {
                let mut dst = vec![0.0f32; offset + len + 5];
                copy_streaming(&src[offset..offset + len], &mut dst[offset..offset + len]);
                assert_eq!(&dst[offset..offset + len], &src[offset..offset + len]);
                assert!(dst[..offset]
                    .iter()
                    .chain(&dst[offset + len..])
                    .all(|&v| v == 0.0));
                let mut dst = vec![f16::ZERO; offset + len + 5];
                copy_streaming(&half[offset..offset + len], &mut dst[offset..offset + len]);
                assert_eq!(&dst[offset..offset + len], &half[offset..offset + len]);
                assert!(dst[..offset]
                    .iter()
                    .chain(&dst[offset + len..])
                    .all(|v| *v == f16::ZERO));
            }
        }
    }

    /// NEON is part of every AArch64 CPU: the NEON kernels are among those the tests run
    /// (CI runs them under qemu-user), not silently replaced by the scalar path.
    #[cfg(target_arch = "aarch64")]
    #[test]
    fn neon_is_available_on_aarch64() {
        let kinds: Vec<_> = super::Isa::available().iter().map(|i| i.kind()).collect();
        assert!(kinds.contains(&super::IsaKind::Neon), "{kinds:?}");
    }

    /// f32 (and wider) outputs stream by default, from the threshold on, and bf16 forward
    /// outputs; the environment's threshold applies to every type and pass.
    #[test]
    fn which_outputs_stream() {
        let min = || 16 << 20;
        assert!(super::streams(true, 16 << 20, None, min));
        assert!(!super::streams(true, (16 << 20) - 4, None, min));
        assert!(!super::streams(false, 1 << 30, None, min));
        assert!(super::streams(false, 2, Some(0), min));
        assert!(!super::streams(true, 1 << 30, Some(usize::MAX), min));
    }

    #[test]
    fn prefetch_for_write_leaves_memory_alone() {
        // A hint at every element, past the end and on an empty slice, at every alignment:
        // nothing faults and nothing is written.
        let data: Vec<u16> = (0..200).collect();
        for start in 0..40 {
            let slice = &data[start..start + 100];
            for i in 0..=101 {
                prefetch_line_for_write(slice, i);
            }
            prefetch_line_for_write(&slice[..0], 0);
        }
        assert!(data.iter().enumerate().all(|(i, &v)| usize::from(v) == i));
    }

    /// A reader walking a slice in consecutive ranges asks for every line the slice touches
    /// exactly once, in order, and never for an address outside the slice.
    #[test]
    fn prefetch_asks_for_each_line_once() {
        for size in [2, 4] {
            for misalign in [0, 2, 4, 30, 62] {
                let base = 4096 + misalign;
                for len in [0, 1, 7, 16, 33, 100, 1000] {
                    for step in [1, 8, 16, 32, 50] {
                        let mut asked = Vec::new();
                        let mut i = 0;
                        while i < len + step {
                            asked.extend(super::line_offsets(base, size, len, i..i + step));
                            i += step;
                        }
                        // The lines the slice touches, as offsets from base (the first one
                        // at base itself).
                        let bytes = len * size;
                        let expected: Vec<usize> = (0..bytes)
                            .filter(|&o| o == 0 || (base + o) % 64 == 0)
                            .collect();
                        assert_eq!(
                            asked, expected,
                            "size {size} base {base} len {len} step {step}"
                        );
                    }
                }
            }
        }
    }
}
