//! Finite-difference gradient checks in f64: backward is the derivative of forward.
//!
//! For L = Σ y·r with a fixed random r, central differences give ∂L/∂θ with error
//! ≈ h²·|L'''|/6 + 2u·|L|/h. L is linear in γ and β, so there h = 1e-5·(1 + |θ|) leaves only
//! rounding (< 1e-9). In x, L''' grows like rstd³, so the step follows the row's spread:
//! h = 1e-4·σ puts the truncation error near 1e-8·|∂L/∂x| and the rounding below 1e-10 for
//! these inputs. So 1e-7 (absolute and relative) is a tolerance the exact gradient meets and a
//! wrong formula (off by a term of order 1) never does.

use crate::common::*;
use layernorm::{layer_norm, Affine, GradMask, Parallelism};

const EPS: f64 = 1e-5;

fn loss(x: &[f64], w: Option<&[f64]>, b: Option<&[f64]>, cols: usize, r: &[f64]) -> f64 {
    let (y, _) = layer_norm::forward(
        x,
        cols,
        Affine { weight: w, bias: b },
        EPS,
        Parallelism::Sequential,
    )
    .unwrap();
    y.iter().zip(r).map(|(y, r)| y * r).sum()
}

fn central_difference(mut f: impl FnMut(f64) -> f64, at: f64, h: f64) -> f64 {
    (f(at + h) - f(at - h)) / (2.0 * h)
}

fn param_step(at: f64) -> f64 {
    1e-5 * (1.0 + at.abs())
}

fn gradcheck(rows: usize, cols: usize, kind: AffineKind, seed: u8) {
    let mut rng = Rand::new(seed);
    let x: Vec<f64> = rng.normals(rows * cols, 0.5, 2.0);
    let r: Vec<f64> = rng.normals(rows * cols, 0.0, 1.0);
    let w: Vec<f64> = rng.normals(cols, 1.0, 0.5);
    let b: Vec<f64> = rng.normals(cols, 0.0, 0.5);
    let wo = kind.has_weight().then_some(&w[..]);
    let bo = kind.has_bias().then_some(&b[..]);
    let (_, stats) = layer_norm::forward(
        &x,
        cols,
        Affine {
            weight: wo,
            bias: bo,
        },
        EPS,
        Parallelism::Rayon,
    )
    .unwrap();
    let grads = layer_norm::backward(
        &r,
        &x,
        cols,
        stats.as_ref(),
        wo,
        GradMask::ALL,
        Parallelism::Rayon,
    )
    .unwrap();
    let tol = 1e-7;

    let dx_fd: Vec<f64> = (0..x.len())
        .map(|i| {
            central_difference(
                |v| {
                    let mut xp = x.clone();
                    xp[i] = v;
                    loss(&xp, wo, bo, cols, &r)
                },
                x[i],
                1e-4 / stats.rstd[i / cols],
            )
        })
        .collect();
    assert_close(
        &format!("dx {kind:?} {rows}×{cols}"),
        grads.dx.as_ref().unwrap(),
        &dx_fd,
        tol,
        tol,
    );

    // dγ is the derivative with respect to γ even when the forward ran without one (γ = 1).
    let w_at = if kind.has_weight() {
        w.clone()
    } else {
        vec![1.0; cols]
    };
    let dw_fd: Vec<f64> = (0..cols)
        .map(|j| {
            central_difference(
                |v| {
                    let mut wp = w_at.clone();
                    wp[j] = v;
                    loss(&x, Some(&wp), bo, cols, &r)
                },
                w_at[j],
                param_step(w_at[j]),
            )
        })
        .collect();
    assert_close(
        &format!("dweight {kind:?}"),
        grads.dweight.as_ref().unwrap(),
        &dw_fd,
        tol,
        tol,
    );

    let b_at = if kind.has_bias() {
        b.clone()
    } else {
        vec![0.0; cols]
    };
    let db_fd: Vec<f64> = (0..cols)
        .map(|j| {
            central_difference(
                |v| {
                    let mut bp = b_at.clone();
                    bp[j] = v;
                    loss(&x, wo, Some(&bp), cols, &r)
                },
                b_at[j],
                param_step(b_at[j]),
            )
        })
        .collect();
    assert_close(
        &format!("dbias {kind:?}"),
        grads.dbias.as_ref().unwrap(),
        &db_fd,
        tol,
        tol,
    );
}

#[test]
fn gradients_match_finite_differences() {
    let mut seed = 30;
    for (rows, cols) in [(1, 1), (3, 2), (4, 7), (2, 16), (3, 33)] {
        for kind in AffineKind::ALL {
            seed += 1;
            gradcheck(rows, cols, kind, seed);
        }
    }
}

#[test]
fn gradients_match_finite_differences_at_a_large_offset() {
    // x = 1e4 + N(0, 2): the gradient must not depend on the offset.
    let cols = 9;
    let mut rng = Rand::new(77);
    let base: Vec<f64> = rng.normals(2 * cols, 0.0, 2.0);
    let r: Vec<f64> = rng.normals(2 * cols, 0.0, 1.0);
    let shifted: Vec<f64> = base.iter().map(|v| v + 1e4).collect();
    let grad = |x: &[f64]| {
        let (_, s) =
            layer_norm::forward(x, cols, Affine::none(), EPS, Parallelism::Sequential).unwrap();
        layer_norm::backward(
            &r,
            x,
            cols,
            s.as_ref(),
            None,
            GradMask::INPUT,
            Parallelism::Sequential,
        )
        .unwrap()
        .dx
        .unwrap()
    };
    assert_close(
        "dx at offset 1e4",
        &grad(&shifted),
        &grad(&base),
        1e-10,
        1e-10,
    );
}
