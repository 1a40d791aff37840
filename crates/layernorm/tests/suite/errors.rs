//! Bad input gets a typed error, never a panic.

use layernorm::{
    layer_norm, Affine, Error, GradMask, GradsMut, LayerNorm, LayerNormConfig, Operand,
    Parallelism, StatsMut, StatsRef,
};
use proptest::prelude::*;

const PAR: Parallelism = Parallelism::Sequential;

#[test]
fn forward_rejects_each_bad_argument() {
    let x = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
    let fwd =
        |x: &[f32], cols, affine, eps| layer_norm::forward(x, cols, affine, eps, PAR).map(|_| ());
    assert_eq!(
        fwd(&x, 0, Affine::none(), 1e-5),
        Err(Error::ZeroSizeDim {
            operand: Operand::NormalizedShape,
            shape: vec![0]
        })
    );
    assert_eq!(
        fwd(&[], 3, Affine::none(), 1e-5),
        Err(Error::ZeroSizeDim {
            operand: Operand::Input,
            shape: vec![0]
        })
    );
    assert_eq!(
        fwd(&x, 4, Affine::none(), 1e-5),
        Err(Error::RaggedInput {
            len: 6,
            normalized_len: 4
        })
    );
    for eps in [0.0, -1e-5, f64::NAN, f64::INFINITY, 1e-40] {
        assert!(
            matches!(
                fwd(&x, 3, Affine::none(), eps),
                Err(Error::InvalidEpsilon { .. })
            ),
            "eps {eps}"
        );
    }
    // f64 accepts an ε that f32 cannot represent.
    assert!(layer_norm::forward(&[1.0f64, 2.0], 2, Affine::none(), 1e-40, PAR).is_ok());
    let short = [1.0f32; 2];
    assert_eq!(
        fwd(&x, 3, Affine::scale(&short), 1e-5),
        Err(Error::LengthMismatch {
            operand: Operand::Weight,
            expected: 3,
            actual: 2
        })
    );
    assert_eq!(
        fwd(
            &x,
            3,
            Affine {
                weight: None,
                bias: Some(&short)
            },
            1e-5
        ),
        Err(Error::LengthMismatch {
            operand: Operand::Bias,
            expected: 3,
            actual: 2
        })
    );
    let mut y = [0.0f32; 5];
    assert_eq!(
        layer_norm::forward_into(&x, 3, Affine::none(), 1e-5, &mut y, None, PAR),
        Err(Error::LengthMismatch {
            operand: Operand::Output,
            expected: 6,
            actual: 5
        })
    );
    let mut y = [0.0f32; 6];
    let (mut mean, mut rstd) = ([0.0f32; 1], [0.0f32; 2]);
    assert_eq!(
        layer_norm::forward_into(
            &x,
            3,
            Affine::none(),
            1e-5,
            &mut y,
            Some(StatsMut {
                mean: &mut mean,
                rstd: &mut rstd
            }),
            PAR
        ),
        Err(Error::LengthMismatch {
            operand: Operand::Mean,
            expected: 2,
            actual: 1
        })
    );
    // Nothing was written on error.
    assert_eq!(y, [0.0; 6]);
}

#[test]
fn backward_rejects_each_bad_argument() {
    let x = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
    let (_, stats) = layer_norm::forward(&x, 3, Affine::none(), 1e-5, PAR).unwrap();
    let dy = [1.0f32; 6];
    let bwd = |dy: &[f32], stats: StatsRef<'_, f32>, w: Option<&[f32]>| {
        layer_norm::backward(dy, &x, 3, stats, w, GradMask::ALL, PAR).map(|_| ())
    };
    assert_eq!(
        bwd(&dy[..5], stats.as_ref(), None),
        Err(Error::LengthMismatch {
            operand: Operand::GradOutput,
            expected: 6,
            actual: 5
        })
    );
    let one = [0.0f32];
    assert_eq!(
        bwd(
            &dy,
            StatsRef {
                mean: &one,
                rstd: &stats.rstd
            },
            None
        ),
        Err(Error::LengthMismatch {
            operand: Operand::Mean,
            expected: 2,
            actual: 1
        })
    );
    assert_eq!(
        bwd(
            &dy,
            StatsRef {
                mean: &stats.mean,
                rstd: &one
            },
            None
        ),
        Err(Error::LengthMismatch {
            operand: Operand::Rstd,
            expected: 2,
            actual: 1
        })
    );
    assert_eq!(
        bwd(&dy, stats.as_ref(), Some(&[1.0; 4])),
        Err(Error::LengthMismatch {
            operand: Operand::Weight,
            expected: 3,
            actual: 4
        })
    );
    let mut dx = [0.0f32; 7];
    let grads = GradsMut {
        dx: Some(&mut dx),
        dweight: None,
        dbias: None,
    };
    assert_eq!(
        layer_norm::backward_into(&dy, &x, 3, stats.as_ref(), None, grads, PAR),
        Err(Error::LengthMismatch {
            operand: Operand::GradInput,
            expected: 6,
            actual: 7
        })
    );
    let mut dw = [0.0f32; 2];
    let grads = GradsMut {
        dx: None,
        dweight: Some(&mut dw),
        dbias: None,
    };
    assert_eq!(
        layer_norm::backward_into(&dy, &x, 3, stats.as_ref(), None, grads, PAR),
        Err(Error::LengthMismatch {
            operand: Operand::GradWeight,
            expected: 3,
            actual: 2
        })
    );
    let mut db = [0.0f32; 4];
    let grads = GradsMut {
        dx: None,
        dweight: None,
        dbias: Some(&mut db),
    };
    assert_eq!(
        layer_norm::backward_into(&dy, &x, 3, stats.as_ref(), None, grads, PAR),
        Err(Error::LengthMismatch {
            operand: Operand::GradBias,
            expected: 3,
            actual: 4
        })
    );
}

#[test]
fn layer_rejects_bad_configs_and_shapes() {
    assert_eq!(LayerNorm::<f32>::new(&[]), Err(Error::EmptyNormalizedShape));
    assert_eq!(
        LayerNorm::<f32>::new(&[4, 0]),
        Err(Error::ZeroSizeDim {
            operand: Operand::NormalizedShape,
            shape: vec![4, 0]
        })
    );
    assert!(matches!(
        LayerNorm::<f32>::new(&[usize::MAX, 3]),
        Err(Error::SizeOverflow { .. })
    ));
    assert!(matches!(
        LayerNormConfig::new(&[4]).eps(-1.0).build::<f64>(),
        Err(Error::InvalidEpsilon { .. })
    ));

    let layer = LayerNorm::<f32>::new(&[2, 3]).unwrap();
    let x = [0.5f32; 12];
    assert_eq!(
        layer.forward(&x, &[4, 3]).map(|_| ()),
        Err(Error::NormalizedShapeMismatch {
            shape: vec![4, 3],
            normalized_shape: vec![2, 3]
        })
    );
    assert_eq!(
        layer.forward(&x, &[3]).map(|_| ()),
        Err(Error::NormalizedShapeMismatch {
            shape: vec![3],
            normalized_shape: vec![2, 3]
        })
    );
    assert_eq!(
        layer.forward(&x, &[3, 2, 3]).map(|_| ()),
        Err(Error::LengthMismatch {
            operand: Operand::Input,
            expected: 18,
            actual: 12
        })
    );
    assert!(matches!(
        layer.forward(&[], &[0, 2, 3]),
        Err(Error::ZeroSizeDim { .. })
    ));
    assert!(matches!(
        layer.forward(&x, &[usize::MAX, 4, 2, 3]),
        Err(Error::SizeOverflow { .. })
    ));
    assert!(layer.forward(&x, &[2, 2, 3]).is_ok());
}

#[test]
fn errors_read_well() {
    let e = Error::LengthMismatch {
        operand: Operand::Weight,
        expected: 3,
        actual: 2,
    };
    assert_eq!(e.to_string(), "weight (gamma) has 2 elements, expected 3");
    let e = Error::InvalidEpsilon {
        eps: -1.0,
        min: f64::from(f32::MIN_POSITIVE),
    };
    assert_eq!(
        e.to_string(),
        "epsilon must be finite and at least 1.1754943508222875e-38, got -1e0"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Arbitrary lengths and arguments: every call returns Ok or Err, never panics.
    #[test]
    fn no_argument_combination_panics(
        len in 0usize..40, cols in 0usize..12, wlen in proptest::option::of(0usize..12),
        blen in proptest::option::of(0usize..12), ylen in 0usize..40, slen in 0usize..12,
        dylen in 0usize..40, eps in prop_oneof![Just(1e-5), Just(0.0), Just(f64::NAN), -1.0f64..1.0],
        shape in proptest::collection::vec(0usize..5, 0..4),
    ) {
        let x: Vec<f32> = (0..len).map(|i| i as f32).collect();
        let w = wlen.map(|n| vec![1.0f32; n]);
        let b = blen.map(|n| vec![0.0f32; n]);
        let affine = Affine { weight: w.as_deref(), bias: b.as_deref() };
        let _ = layer_norm::forward(&x, cols, affine, eps, PAR);
        let mut y = vec![0.0f32; ylen];
        let (mut m, mut r) = (vec![0.0f32; slen], vec![1.0f32; slen]);
        let _ = layer_norm::forward_into(&x, cols, affine, eps, &mut y, Some(StatsMut { mean: &mut m, rstd: &mut r }), PAR);
        let dy = vec![1.0f32; dylen];
        let _ = layer_norm::backward(&dy, &x, cols, StatsRef { mean: &m, rstd: &r }, w.as_deref(), GradMask::ALL, PAR);
        if let Ok(layer) = LayerNormConfig::new(&shape).eps(eps).build::<f32>() {
            let _ = layer.forward(&x, &shape);
        }
    }
}
