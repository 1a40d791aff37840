//! Normwise error of LayerNorm on f32 input `x = c + N(0, 1)` against the f64 reference
//! computed from the same f32 values, for growing offsets c — forward (y) and backward (dx).
//!
//!     cargo run --release -p layernorm --example accuracy
//!
//! For contrast, the last column is a plain f32 two-pass kernel (mean, then variance, both
//! summed in f32), which is what most implementations do.

use layernorm::reference::{layer_norm_backward, layer_norm_forward};
use layernorm::{layer_norm, Affine, GradMask, Parallelism};

const ROWS: usize = 64;
const COLS: usize = 768;

fn main() -> Result<(), layernorm::Error> {
    println!("f32 input x = c + N(0, 1), {ROWS} rows × {COLS}; ‖y − y_ref‖/‖y_ref‖ (f64 ref)\n");
    println!(
        "{:>8} {:>14} {:>14} {:>18}",
        "c", "layernorm y", "layernorm dx", "f32 two-pass y"
    );
    let mut state = 0x1234_5678_9abc_def0u64;
    for c in [0.0, 1e2, 1e4, 1e6, 1e7, 1e8] {
        let x: Vec<f32> = (0..ROWS * COLS)
            .map(|_| (c + normal(&mut state)) as f32)
            .collect();
        let dy: Vec<f32> = (0..ROWS * COLS)
            .map(|_| normal(&mut state) as f32)
            .collect();
        let par = Parallelism::Rayon;
        let (y, stats) = layer_norm::forward(&x, COLS, Affine::none(), 1e-5, par)?;
        let grads =
            layer_norm::backward(&dy, &x, COLS, stats.as_ref(), None, GradMask::INPUT, par)?;
        let xf: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
        let dyf: Vec<f64> = dy.iter().map(|&v| f64::from(v)).collect();
        let (y_ref, _, _) = layer_norm_forward(&xf, COLS, None, None, 1e-5);
        let (dx_ref, _, _) = layer_norm_backward(&dyf, &xf, COLS, None, 1e-5);
        let naive = naive_f32(&x, COLS, 1e-5);
        println!(
            "{c:>8.0e} {:>14.2e} {:>14.2e} {:>18.2e}",
            normwise(&y, &y_ref),
            normwise(grads.dx.as_deref().unwrap_or_default(), &dx_ref),
            normwise(&naive, &y_ref)
        );
    }
    Ok(())
}

/// The textbook kernel in f32: mean, then mean of squared deviations, then normalize.
fn naive_f32(x: &[f32], cols: usize, eps: f32) -> Vec<f32> {
    let mut y = Vec::with_capacity(x.len());
    for row in x.chunks(cols) {
        let mean = row.iter().sum::<f32>() / cols as f32;
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / cols as f32;
        let rstd = 1.0 / (var + eps).sqrt();
        y.extend(row.iter().map(|v| (v - mean) * rstd));
    }
    y
}

fn normwise(got: &[f32], want: &[f64]) -> f64 {
    let num: f64 = got
        .iter()
        .zip(want)
        .map(|(&g, w)| (f64::from(g) - w).powi(2))
        .sum();
    let den: f64 = want.iter().map(|w| w * w).sum();
    (num / den).sqrt()
}

/// A standard normal from a SplitMix64 stream (Box–Muller).
fn normal(state: &mut u64) -> f64 {
    let mut next = || {
        *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    };
    let (u1, u2) = (1.0 - next(), next());
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}
