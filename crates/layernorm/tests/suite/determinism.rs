//! Bitwise determinism: the same bits with 1, 2, 3 and 7 threads and sequentially, and a row's
//! outputs the same whether it is normalized alone or inside a batch of any size.

use crate::common::*;
use layernorm::{bf16, layer_norm, Affine, Element, GradMask, Gradients, Parallelism, Stats};

type Outputs<T> = (Vec<T>, Stats<<T as Element>::Compute>, Gradients<T>);

fn run<T: Element>(
    x: &[T],
    dy: &[T],
    w: &[T],
    b: &[T],
    cols: usize,
    par: Parallelism,
) -> Outputs<T> {
    let (y, stats) = layer_norm::forward(x, cols, Affine::scale_shift(w, b), 1e-5, par).unwrap();
    let g = layer_norm::backward(dy, x, cols, stats.as_ref(), Some(w), GradMask::ALL, par).unwrap();
    (y, stats, g)
}

/// Runs `f` in a pool of `threads` threads, with the instruction set the calling thread uses
/// (`with_isa` overrides are per thread, so the pool's thread must set it again).
fn in_pool<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    let isa = CURRENT
        .with(|c| c.get())
        .unwrap_or(layernorm::cpu_info().selected);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    pool.install(|| layernorm::with_isa(isa, f).unwrap())
}

thread_local! {
    static CURRENT: std::cell::Cell<Option<layernorm::IsaKind>> = const { std::cell::Cell::new(None) };
}

/// `with_isa`, remembering the choice so that `in_pool` can carry it over.
fn on_isa(kind: layernorm::IsaKind, f: impl FnOnce()) {
    CURRENT.with(|c| c.set(Some(kind)));
    layernorm::with_isa(kind, f).unwrap();
    CURRENT.with(|c| c.set(None));
}

fn thread_counts_agree<T: Element>(rows: usize, cols: usize) {
    let mut rng = Rand::new(21);
    let x: Vec<T> = rng.normals(rows * cols, 2.0, 3.0);
    let dy: Vec<T> = rng.normals(rows * cols, 0.0, 1.0);
    let w: Vec<T> = rng.normals(cols, 1.0, 0.5);
    let b: Vec<T> = rng.normals(cols, 0.0, 0.5);
    let sequential = run(&x, &dy, &w, &b, cols, Parallelism::Sequential);
    for threads in [1, 2, 3, 7] {
        let threaded = in_pool(threads, || run(&x, &dy, &w, &b, cols, Parallelism::Rayon));
        // PartialEq on floats: bitwise for everything but NaN, and there is none here.
        assert!(
            threaded == sequential,
            "{} {rows}×{cols}: {threads} threads differ",
            T::NAME
        );
    }
}

#[test]
fn outputs_are_bitwise_identical_across_thread_counts() {
    // On every instruction set: large enough to split into many blocks (from 2^16 elements).
    for kind in layernorm::cpu_info().available {
        on_isa(kind, || {
            for (rows, cols) in [(1600, 128), (257, 1023), (3000, 17), (40, 4097)] {
                thread_counts_agree::<f32>(rows, cols);
            }
            thread_counts_agree::<f64>(1024, 96);
            thread_counts_agree::<layernorm::bf16>(700, 100);
            thread_counts_agree::<layernorm::f16>(300, 257);
        });
    }
}

#[test]
fn a_row_gives_the_same_bits_alone_or_in_any_batch() {
    let cols = 768;
    let mut rng = Rand::new(8);
    let probe_x: Vec<f32> = rng.normals(cols, 5.0, 2.0);
    let probe_dy: Vec<f32> = rng.normals(cols, 0.0, 1.0);
    let w: Vec<f32> = rng.normals(cols, 1.0, 0.5);
    let b: Vec<f32> = rng.normals(cols, 0.0, 0.5);
    for kind in layernorm::cpu_info().available {
        on_isa(kind, || {
            batch_invariance(&probe_x, &probe_dy, &w, &b, &mut rng)
        });
    }
}

fn batch_invariance(probe_x: &[f32], probe_dy: &[f32], w: &[f32], b: &[f32], rng: &mut Rand) {
    let cols = probe_x.len();
    let (y1, s1, g1) = run(probe_x, probe_dy, w, b, cols, Parallelism::Rayon);
    for (batch, position) in [(2, 1), (8, 3), (33, 32), (200, 117)] {
        let mut x: Vec<f32> = rng.normals(batch * cols, 0.0, 10.0);
        let mut dy: Vec<f32> = rng.normals(batch * cols, 0.0, 1.0);
        let span = position * cols..(position + 1) * cols;
        x[span.clone()].copy_from_slice(probe_x);
        dy[span.clone()].copy_from_slice(probe_dy);
        for threads in [1, 3] {
            let (y, s, g) = in_pool(threads, || run(&x, &dy, w, b, cols, Parallelism::Rayon));
            assert_eq!(&y[span.clone()], &y1[..], "y, batch {batch}");
            assert_eq!(s.mean[position], s1.mean[0]);
            assert_eq!(s.rstd[position], s1.rstd[0]);
            assert_eq!(
                &g.dx.as_ref().unwrap()[span.clone()],
                &g1.dx.as_ref().unwrap()[..],
                "dx, batch {batch}"
            );
        }
    }
}

/// The kernels pipeline the rows (pass 1 of the next row, or pair of rows, inside pass
/// 2 of the current one) and send rows outside f32's range to an f64 path: a row's bits must
/// not depend on which neighbours it has, on either side, in groups or not.
#[test]
fn a_row_gives_the_same_bits_beside_rows_on_the_f64_path() {
    let mut rng = Rand::new(31);
    // Short rows go one by one; rows of 2048 and more in pairs.
    for cols in [768, 2053] {
        let w: Vec<f32> = rng.normals(cols, 1.0, 0.5);
        let b: Vec<f32> = rng.normals(cols, 0.0, 0.5);
        let normal = |rng: &mut Rand| rng.normals::<f32>(cols, 3.0, 2.0);
        // rstd ≈ 1e-33, outside f32's safe range: the f64 path.
        let huge = |rng: &mut Rand| -> Vec<f32> {
            rng.normals::<f32>(cols, 0.0, 1.0)
                .iter()
                .map(|v| v * 1e33)
                .collect()
        };
        for probe_is_huge in [false, true] {
            let probe_x = if probe_is_huge {
                huge(&mut rng)
            } else {
                normal(&mut rng)
            };
            let probe_dy: Vec<f32> = rng.normals(cols, 0.0, 1.0);
            // Neighbour patterns: 'n' a normal row, 'h' a huge one, 'p' the probe.
            for pattern in [
                "hp",
                "ph",
                "hpn",
                "nnnnhpnnn",
                "nnnnpnnnh",
                "nnnhnnnnp",
                "hhhhpnnnn",
            ] {
                let rows = pattern.len();
                let position = pattern.find('p').unwrap();
                let mut x = Vec::with_capacity(rows * cols);
                for c in pattern.chars() {
                    match c {
                        'p' => x.extend_from_slice(&probe_x),
                        'h' => x.extend(huge(&mut rng)),
                        _ => x.extend(normal(&mut rng)),
                    }
                }
                let mut dy: Vec<f32> = rng.normals(rows * cols, 0.0, 1.0);
                let span = position * cols..(position + 1) * cols;
                dy[span.clone()].copy_from_slice(&probe_dy);
                for kind in layernorm::cpu_info().available {
                    on_isa(kind, || {
                        let seq = Parallelism::Sequential;
                        let (y1, s1, g1) = run(&probe_x, &probe_dy, &w, &b, cols, seq);
                        let (y, s, g) = run(&x, &dy, &w, &b, cols, seq);
                        let what =
                            format!("{kind:?} {cols} cols, {pattern}, huge probe {probe_is_huge}");
                        assert_eq!(&y[span.clone()], &y1[..], "y, {what}");
                        assert_eq!(s.mean[position], s1.mean[0], "mean, {what}");
                        assert_eq!(s.rstd[position], s1.rstd[0], "rstd, {what}");
                        let (dx, dx1) = (g.dx.unwrap(), g1.dx.unwrap());
                        assert_eq!(&dx[span.clone()], &dx1[..], "dx, {what}");
                    });
                }
            }
        }
    }
}

#[test]
fn a_row_gives_the_same_bits_at_any_alignment() {
    // The reduction order depends on the index within the row, never on the address.
    let cols = 67;
    let mut rng = Rand::new(13);
    let buf: Vec<f32> = rng.normals(cols + 16, 1.0, 1.0);
    let row: Vec<f32> = buf[..cols].to_vec();
    let (y0, s0) =
        layer_norm::forward(&row, cols, Affine::none(), 1e-5, Parallelism::Sequential).unwrap();
    for shift in 1..16 {
        let mut shifted = vec![0.0f32; shift];
        shifted.extend_from_slice(&row);
        let (y, s) = layer_norm::forward(
            &shifted[shift..],
            cols,
            Affine::none(),
            1e-5,
            Parallelism::Sequential,
        )
        .unwrap();
        assert_eq!((y, s), (y0.clone(), s0.clone()), "shift {shift}");
    }
}

#[test]
fn outputs_give_the_same_bits_wherever_they_start() {
    // y and dx are written with non-temporal stores from their first vector-aligned address
    // on (with LAYERNORM_STREAM_MIN_BYTES=0, as CI runs the suite, on every output): the
    // elements before it and the tails take the same vector arithmetic, so where an output
    // starts changes no bit of it, nor of dγ/dβ. 2053 columns: rows go through backward pass
    // 2 in pairs (two, and one alone), with a tail. Shifts of 0..32 elements put bf16
    // outputs at every 64-byte alignment (AVX-512 stores bf16 two vectors at a time).
    for kind in layernorm::cpu_info().available {
        on_isa(kind, || {
            same_bits_at_every_start::<f32>(kind, 16);
            same_bits_at_every_start::<bf16>(kind, 32);
        });
    }
}

fn same_bits_at_every_start<T: Element>(kind: layernorm::IsaKind, shifts: usize) {
    let (rows, cols) = (5, 2053);
    let mut rng = Rand::new(29);
    let x: Vec<T> = rng.normals(rows * cols, 2.0, 1.5);
    let dy: Vec<T> = rng.normals(rows * cols, 0.0, 1.0);
    let w: Vec<T> = rng.normals(cols, 1.0, 0.3);
    let b: Vec<T> = rng.normals(cols, 0.0, 0.3);
    let n = rows * cols;
    let zero = T::default();
    let at = |shift: usize| {
        let par = Parallelism::Sequential;
        let (mut y, mut mean, mut rstd) = (
            vec![zero; n + shifts],
            vec![Default::default(); rows],
            vec![Default::default(); rows],
        );
        let stats = layernorm::StatsMut {
            mean: &mut mean,
            rstd: &mut rstd,
        };
        let affine = Affine::scale_shift(&w, &b);
        let y_out = &mut y[shift..shift + n];
        layer_norm::forward_into(&x, cols, affine, 1e-5, y_out, Some(stats), par).unwrap();
        let (mut dx, mut dw, mut db) = (vec![zero; n + shifts], vec![zero; cols], vec![zero; cols]);
        let grads = layernorm::GradsMut {
            dx: Some(&mut dx[shift..shift + n]),
            dweight: Some(&mut dw),
            dbias: Some(&mut db),
        };
        let stats = layernorm::StatsRef {
            mean: &mean,
            rstd: &rstd,
        };
        layer_norm::backward_into(&dy, &x, cols, stats, Some(&w), grads, par).unwrap();
        // PartialEq on floats: bitwise for everything but NaN, and there is none here.
        (
            y[shift..shift + n].to_vec(),
            dx[shift..shift + n].to_vec(),
            dw,
            db,
        )
    };
    let first = at(0);
    for shift in 1..shifts {
        assert!(
            at(shift) == first,
            "{kind:?} {}: outputs moved by {shift} elements differ",
            T::NAME
        );
    }
}

/// Long rows (2^19 columns and more, cut into pieces of columns: `kernels/long.rs`): the
/// same bits on any number of threads, and a row's outputs the same alone or beside others —
/// among them a row whose spread sends it to the f64 path (values near ±1e35), which must
/// itself give the bits it gives alone.
#[test]
fn long_rows_are_deterministic_and_batch_invariant() {
    let cols = (1 << 19) + 37;
    let mut rng = Rand::new(41);
    let probe_x: Vec<f32> = rng.normals(cols, 5.0, 2.0);
    let probe_dy: Vec<f32> = rng.normals(cols, 0.0, 1.0);
    let huge_x: Vec<f32> = rng.normals(cols, 0.0, 1e35);
    let w: Vec<f32> = rng.normals(cols, 1.0, 0.5);
    let b: Vec<f32> = rng.normals(cols, 0.0, 0.5);
    for kind in layernorm::cpu_info().available {
        on_isa(kind, || {
            thread_counts_agree::<f32>(2, cols);
            thread_counts_agree::<bf16>(1, 1 << 19);
            let alone = |x: &[f32]| run(x, &probe_dy, &w, &b, cols, Parallelism::Sequential);
            let (probe, huge) = (alone(&probe_x), alone(&huge_x));
            assert!(
                huge.0.iter().all(|v| v.is_finite()),
                "f64-path row not finite"
            );
            for (rows, at, huge_at) in [(2, 1, None), (3, 0, Some(2)), (3, 2, Some(1))] {
                let mut x: Vec<f32> = rng.normals(rows * cols, 0.0, 10.0);
                let mut dy: Vec<f32> = rng.normals(rows * cols, 0.0, 1.0);
                let mut place = |r: usize, row: &[f32]| {
                    x[r * cols..(r + 1) * cols].copy_from_slice(row);
                    dy[r * cols..(r + 1) * cols].copy_from_slice(&probe_dy);
                };
                place(at, &probe_x);
                if let Some(h) = huge_at {
                    place(h, &huge_x);
                }
                let (y, s, g) = in_pool(2, || run(&x, &dy, &w, &b, cols, Parallelism::Rayon));
                let dx = g.dx.as_ref().unwrap();
                let checks = std::iter::once((at, &probe)).chain(huge_at.map(|h| (h, &huge)));
                for (r, (y1, s1, g1)) in checks {
                    let span = r * cols..(r + 1) * cols;
                    assert_eq!(&y[span.clone()], &y1[..], "y, row {r} of {rows}");
                    assert_eq!((s.mean[r], s.rstd[r]), (s1.mean[0], s1.rstd[0]));
                    assert_eq!(&dx[span], &g1.dx.as_ref().unwrap()[..], "dx, row {r}");
                }
            }
        });
    }
}
