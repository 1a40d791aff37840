//! Property tests on random shapes, values, offsets and misaligned starts.

use crate::common::*;
use layernorm::reference::layer_norm_forward;
use layernorm::{layer_norm, Affine, GradMask, Parallelism};
use proptest::prelude::*;

/// A random problem: rows × cols of f32 values `offset + spread·v`, starting `misalign`
/// elements into its buffer.
#[derive(Debug, Clone)]
struct Problem {
    rows: usize,
    cols: usize,
    misalign: usize,
    buf: Vec<f32>,
}

impl Problem {
    fn x(&self) -> &[f32] {
        &self.buf[self.misalign..]
    }
}

fn problem() -> impl Strategy<Value = Problem> {
    (1usize..24, 1usize..300, 0usize..4, -1e6f64..1e6, -3i32..4).prop_flat_map(
        |(rows, cols, misalign, offset, log_spread)| {
            let spread = 10f64.powi(log_spread);
            let n = rows * cols + misalign;
            proptest::collection::vec(-1.0f64..1.0, n).prop_map(move |v| Problem {
                rows,
                cols,
                misalign,
                buf: v.iter().map(|u| (offset + spread * u) as f32).collect(),
            })
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn rows_have_zero_mean_and_unit_variance(p in problem()) {
        let (y, _) = layer_norm::forward(p.x(), p.cols, Affine::none(), 1e-5, Parallelism::Rayon).unwrap();
        let (y_ref, _, _) = layer_norm_forward(&widen_all(p.x()), p.cols, None, None, 1e-5);
        // Against the f64 reference on the same inputs: the core accuracy target.
        let err = normwise_error(&widen_all(&y), &y_ref);
        prop_assert!(err <= 1e-6 || max_abs(&y_ref) == 0.0, "normwise error {err:e}");
        for (row, row_ref) in y.chunks(p.cols).zip(y_ref.chunks(p.cols)) {
            let n = p.cols as f64;
            let mean = row.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
            let var_ref = row_ref.iter().map(|v| v * v).sum::<f64>() / n; // σ²/(σ² + ε)
            let var = row.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / n;
            // Each y carries ≤ 5 roundings of 2^-24 relative to |x̂| ≤ √n.
            let tol = 6.0 * n.sqrt() * f64::from(f32::EPSILON);
            prop_assert!(mean.abs() <= tol, "row mean {mean:e}");
            prop_assert!((var - var_ref).abs() <= 2.0 * tol * (1.0 + n.sqrt()), "row var {var} vs {var_ref}");
        }
    }

    #[test]
    fn scaling_by_a_power_of_two_is_bitwise_invariant(p in problem(), k in -20i32..20) {
        // Every step scales exactly: LN(2^k·x; 4^k·ε) = LN(x; ε) bit for bit.
        let s = 2f32.powi(k);
        let scaled: Vec<f32> = p.x().iter().map(|v| v * s).collect();
        let par = Parallelism::Rayon;
        let (y0, _) = layer_norm::forward(p.x(), p.cols, Affine::none(), 1e-5, par).unwrap();
        let (y1, _) = layer_norm::forward(&scaled, p.cols, Affine::none(), 1e-5 * 4f64.powi(k), par).unwrap();
        prop_assert_eq!(y0, y1);
    }

    #[test]
    fn sub_batches_give_the_same_bits(p in problem(), split in 0usize..24) {
        let split = split.min(p.rows) * p.cols;
        let x = p.x();
        let dy: Vec<f32> = x.iter().map(|v| v.sin()).collect();
        let w: Vec<f32> = (0..p.cols).map(|j| 1.0 + (j as f32).cos() / 2.0).collect();
        let par = Parallelism::Rayon;
        let full = layer_norm::forward(x, p.cols, Affine::scale(&w), 1e-5, par).unwrap();
        let gfull = layer_norm::backward(&dy, x, p.cols, full.1.as_ref(), Some(&w), GradMask::INPUT, par).unwrap();
        for (lo, hi) in [(0, split), (split, x.len())] {
            if lo == hi {
                continue;
            }
            let part = layer_norm::forward(&x[lo..hi], p.cols, Affine::scale(&w), 1e-5, par).unwrap();
            prop_assert_eq!(&part.0[..], &full.0[lo..hi]);
            let g = layer_norm::backward(&dy[lo..hi], &x[lo..hi], p.cols, part.1.as_ref(), Some(&w), GradMask::INPUT, par)
                .unwrap();
            prop_assert_eq!(&g.dx.unwrap()[..], &gfull.dx.as_ref().unwrap()[lo..hi]);
        }
    }

    #[test]
    fn accuracy_holds_after_any_shift(p in problem(), shift in -1e3f64..1e3) {
        // Shifting changes which f32 values the input holds (the shift rounds), so each
        // shifted input is checked against the f64 reference on its own values.
        let shifted: Vec<f32> = p.x().iter().map(|&v| (f64::from(v) + shift) as f32).collect();
        let (y, _) = layer_norm::forward(&shifted, p.cols, Affine::none(), 1e-5, Parallelism::Rayon).unwrap();
        let (y_ref, _, _) = layer_norm_forward(&widen_all(&shifted), p.cols, None, None, 1e-5);
        let err = normwise_error(&widen_all(&y), &y_ref);
        prop_assert!(err <= 1e-6 || max_abs(&y_ref) == 0.0, "normwise error {err:e}");
    }
}
