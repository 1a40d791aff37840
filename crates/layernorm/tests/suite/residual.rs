//! Fused residual add + LayerNorm/RMSNorm: the same bits as the two steps done apart (forward),
//! and the composed gradient plus the sum's own (backward), on every ISA and dtype.

use crate::common::*;
use layernorm::reference::{layer_norm_backward, rms_norm_backward};
use layernorm::{layer_norm, rms_norm, Affine, Element, GradMask, Parallelism, Upstream};

fn add<T: Element>(a: &[T], b: &[T]) -> Vec<T> {
    a.iter()
        .zip(b)
        .map(|(&a, &b)| T::narrow(a.widen() + b.widen()))
        .collect()
}

fn check<T: Element>(rows: usize, cols: usize, seed: u8) {
    let what = format!("{} {rows}×{cols}", T::NAME);
    let par = Parallelism::Rayon;
    let mut rng = Rand::new(seed);
    let x: Vec<T> = rng.normals(rows * cols, 0.5, 2.0);
    let r: Vec<T> = rng.normals(rows * cols, -0.5, 1.0);
    let w: Vec<T> = rng.normals(cols, 1.0, 0.5);
    let b: Vec<T> = rng.normals(cols, 0.0, 0.5);
    let dy: Vec<T> = rng.normals(rows * cols, 0.0, 1.0);
    let ds: Vec<T> = rng.normals(rows * cols, 0.0, 1.0);
    let sum = add(&x, &r);

    // LayerNorm: forward bitwise equal to composing the two steps.
    let affine = Affine::scale_shift(&w, &b);
    let fused = layer_norm::forward_residual(&x, &r, cols, affine, 1e-5, par).unwrap();
    let (y, stats) = layer_norm::forward(&sum, cols, affine, 1e-5, par).unwrap();
    assert_eq!(fused.sum, sum, "sum {what}");
    assert!(
        fused.y == y && fused.stats == stats,
        "LayerNorm y/stats {what}"
    );
    // Backward: dx = LN'(dy) + dsum, against the f64 reference (bounds as in
    // reference_agreement.rs, plus one rounding of the added dsum).
    let up = Upstream {
        dy: &dy,
        dsum: Some(&ds),
    };
    let g = layer_norm::backward_residual(
        up,
        &fused.sum,
        cols,
        fused.stats.as_ref(),
        Some(&w),
        GradMask::ALL,
        par,
    )
    .unwrap();
    let (dx_ref, _, _) = layer_norm_backward(
        &widen_all(&dy),
        &widen_all(&sum),
        cols,
        Some(&widen_all(&w)),
        1e-5,
    );
    let want: Vec<f64> = dx_ref
        .iter()
        .zip(widen_all(&ds))
        .map(|(a, b)| a + b)
        .collect();
    let u = T::UNIT_ROUNDOFF;
    // dx's rounding scales with rstd·|g| (g = dy·γ), not with |dx|: for a one-element row dx
    // is 0 in exact arithmetic but rstd·g − rstd·mean(g) rounds each product first.
    let g_max = max_abs(&widen_all(&dy)) * max_abs(&widen_all(&w));
    let rstd_max = widen_stats(&fused.stats.rstd)
        .iter()
        .fold(0.0f64, |m, v| m.max(*v));
    let scale = max_abs(&want) + max_abs(&widen_all(&ds)) + rstd_max * g_max;
    assert_close(
        &format!("LN dx {what}"),
        &widen_all(g.dx.as_ref().unwrap()),
        &want,
        32.0 * u * scale,
        0.0,
    );
    let plain = layer_norm::backward(
        &dy,
        &sum,
        cols,
        stats.as_ref(),
        Some(&w),
        GradMask::ALL,
        par,
    )
    .unwrap();
    // dγ and dβ do not see dsum: the plain backward's, bit for bit (and that one is checked
    // against the reference in reference_agreement.rs).
    assert_eq!(g.dweight, plain.dweight, "dγ does not depend on dsum");
    assert_eq!(g.dbias, plain.dbias);

    // RMSNorm likewise.
    let fused = rms_norm::forward_residual(&x, &r, cols, Some(&w), 1e-5, par).unwrap();
    let (y, rstd) = rms_norm::forward(&sum, cols, Some(&w), 1e-5, par).unwrap();
    assert!(
        fused.sum == sum && fused.y == y && fused.stats.rstd == rstd,
        "RMSNorm {what}"
    );
    assert!(fused.stats.mean.is_empty());
    let g = rms_norm::backward_residual(up, &fused.sum, cols, &rstd, Some(&w), GradMask::ALL, par)
        .unwrap();
    assert!(g.dbias.is_none());
    let (dx_ref, _) = rms_norm_backward(
        &widen_all(&dy),
        &widen_all(&sum),
        cols,
        Some(&widen_all(&w)),
        1e-5,
    );
    let want: Vec<f64> = dx_ref
        .iter()
        .zip(widen_all(&ds))
        .map(|(a, b)| a + b)
        .collect();
    let rstd_max = widen_stats(&rstd).iter().fold(0.0f64, |m, v| m.max(*v));
    let scale = max_abs(&want) + max_abs(&widen_all(&ds)) + rstd_max * g_max;
    assert_close(
        &format!("RMS dx {what}"),
        &widen_all(g.dx.as_ref().unwrap()),
        &want,
        32.0 * u * scale,
        0.0,
    );
    // Without dsum, the fused backward is the plain one, bit for bit.
    let up = Upstream {
        dy: &dy,
        dsum: None,
    };
    let g =
        rms_norm::backward_residual(up, &sum, cols, &rstd, Some(&w), GradMask::ALL, par).unwrap();
    let plain = rms_norm::backward(&dy, &sum, cols, &rstd, Some(&w), GradMask::ALL, par).unwrap();
    assert_eq!(g, plain);
}

#[test]
fn fused_residual_equals_the_composed_steps_on_every_isa() {
    for kind in layernorm::cpu_info().available {
        layernorm::with_isa(kind, || {
            for (k, &(rows, cols)) in [(3, 1), (4, 17), (5, 64), (3, 1023), (600, 130)]
                .iter()
                .enumerate()
            {
                check::<f32>(rows, cols, k as u8);
                check::<f64>(rows, cols, k as u8);
                check::<layernorm::f16>(rows, cols, k as u8);
                check::<layernorm::bf16>(rows, cols, k as u8);
            }
        })
        .unwrap();
    }
}

#[test]
fn fused_residual_rejects_mismatched_buffers() {
    let x = [1.0f32; 6];
    let err = layer_norm::forward_residual(
        &x,
        &[1.0; 5],
        3,
        Affine::none(),
        1e-5,
        Parallelism::Sequential,
    );
    assert!(matches!(
        err,
        Err(layernorm::Error::LengthMismatch {
            operand: layernorm::Operand::Residual,
            expected: 6,
            actual: 5
        })
    ));
    let out =
        layer_norm::forward_residual(&x, &x, 3, Affine::none(), 1e-5, Parallelism::Sequential)
            .unwrap();
    let up = Upstream {
        dy: &x,
        dsum: Some(&[0.0; 4]),
    };
    let err = layer_norm::backward_residual(
        up,
        &out.sum,
        3,
        out.stats.as_ref(),
        None,
        GradMask::ALL,
        Parallelism::Sequential,
    );
    assert!(matches!(
        err,
        Err(layernorm::Error::LengthMismatch {
            operand: layernorm::Operand::GradSum,
            ..
        })
    ));
}
