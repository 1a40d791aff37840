//! The `LayerNorm` layer: a normalized shape, ε, and the γ/β it owns.

use crate::dtype::{Element, Float};
use crate::error::{Error, Result};
use crate::layout::{checked_product, RowsCols};
use crate::norm::{check_eps, Affine, GradMask, Gradients, Stats, StatsMut, StatsRef};
use crate::par::Parallelism;

use super::{backward, forward, forward_into, DEFAULT_EPS};

/// How to build a [`LayerNorm`]: the normalized shape plus options, validated by
/// [`build`](Self::build).
///
/// ```
/// use layernorm::LayerNormConfig;
///
/// // Keras' LayerNormalization() defaults: ε = 1e-3, γ and β learnable.
/// let layer = LayerNormConfig::new(&[128]).eps(1e-3).build::<f32>()?;
/// assert_eq!(layer.weight().unwrap().len(), 128);
/// # Ok::<(), layernorm::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct LayerNormConfig {
    normalized_shape: Vec<usize>,
    eps: f64,
    elementwise_affine: bool,
    bias: bool,
    parallelism: Parallelism,
}

impl LayerNormConfig {
    /// Normalize over trailing dims equal to `normalized_shape`; ε = 1e-5, learnable γ and β
    /// (PyTorch's `nn.LayerNorm` defaults), threads from the current rayon pool.
    pub fn new(normalized_shape: &[usize]) -> Self {
        LayerNormConfig {
            normalized_shape: normalized_shape.to_vec(),
            eps: DEFAULT_EPS,
            elementwise_affine: true,
            bias: true,
            parallelism: Parallelism::default(),
        }
    }

    /// Sets ε, added to the variance under the square root.
    pub fn eps(mut self, eps: f64) -> Self {
        self.eps = eps;
        self
    }

    /// Whether the layer has a learnable γ (and β, unless [`bias`](Self::bias) is false).
    pub fn elementwise_affine(mut self, on: bool) -> Self {
        self.elementwise_affine = on;
        self
    }

    /// Whether the layer has a learnable β (only with `elementwise_affine`).
    pub fn bias(mut self, on: bool) -> Self {
        self.bias = on;
        self
    }

    /// How the layer may use threads.
    pub fn parallelism(mut self, par: Parallelism) -> Self {
        self.parallelism = par;
        self
    }

    /// Validates the configuration and builds the layer with γ = 1 and β = 0.
    ///
    /// # Errors
    /// [`Error::EmptyNormalizedShape`], [`Error::ZeroSizeDim`], [`Error::SizeOverflow`] for a
    /// bad shape; [`Error::InvalidEpsilon`] unless ε is finite and at least the smallest
    /// normal number of the compute type (`f32::MIN_POSITIVE` for f32).
    pub fn build<T: Element>(self) -> Result<LayerNorm<T>> {
        let shape = &self.normalized_shape;
        // The normalized shape on its own is a valid single-row input shape.
        let cols = RowsCols::split_at_axis(shape, 0).map_err(|e| match e {
            Error::AxisOutOfRange { .. } => Error::EmptyNormalizedShape,
            Error::ZeroSizeDim { shape, .. } => Error::ZeroSizeDim {
                operand: crate::Operand::NormalizedShape,
                shape,
            },
            other => other,
        })?;
        check_eps::<T::Compute>(self.eps)?;
        let ones = || vec![T::narrow(T::Compute::ONE); cols.cols];
        let zeros = || vec![T::default(); cols.cols];
        Ok(LayerNorm {
            weight: self.elementwise_affine.then(ones),
            bias: (self.elementwise_affine && self.bias).then(zeros),
            cols: cols.cols,
            config: self,
        })
    }
}

/// A Layer Normalization layer over the trailing dims `normalized_shape`, owning γ and β.
///
/// ```
/// use layernorm::{GradMask, LayerNorm};
///
/// let layer = LayerNorm::<f32>::new(&[2])?;
/// // The seed's example: 2 sentences × 3 words × 2-dim embeddings.
/// let x = [0.1, 0.5, 0.3, 0.8, 0.9, 0.4, 0.9, 0.4, 0.2, 0.3, 0.6, 0.7];
/// let (y, stats) = layer.forward(&x, &[2, 3, 2])?;
/// assert_eq!(stats.mean.len(), 6); // one per token
///
/// let dy = vec![1.0; 12];
/// let grads = layer.backward(&dy, &x, &[2, 3, 2], &stats, GradMask::ALL)?;
/// assert_eq!(grads.dbias.unwrap(), vec![6.0, 6.0]);
/// # Ok::<(), layernorm::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct LayerNorm<T> {
    config: LayerNormConfig,
    cols: usize,
    weight: Option<Vec<T>>,
    bias: Option<Vec<T>>,
}

impl<T: Element> LayerNorm<T> {
    /// A layer with PyTorch's defaults (ε = 1e-5, γ = 1 and β = 0, both learnable).
    ///
    /// # Errors
    /// As [`LayerNormConfig::build`].
    pub fn new(normalized_shape: &[usize]) -> Result<Self> {
        LayerNormConfig::new(normalized_shape).build()
    }

    /// The configuration the layer was built from.
    pub fn config(&self) -> &LayerNormConfig {
        &self.config
    }

    /// The normalized (trailing) shape.
    pub fn normalized_shape(&self) -> &[usize] {
        &self.config.normalized_shape
    }

    /// ε.
    pub fn eps(&self) -> f64 {
        self.config.eps
    }

    /// γ, if the layer has one.
    pub fn weight(&self) -> Option<&[T]> {
        self.weight.as_deref()
    }

    /// γ, mutably (to load trained values or apply an update).
    pub fn weight_mut(&mut self) -> Option<&mut [T]> {
        self.weight.as_deref_mut()
    }

    /// β, if the layer has one.
    pub fn bias(&self) -> Option<&[T]> {
        self.bias.as_deref()
    }

    /// β, mutably.
    pub fn bias_mut(&mut self) -> Option<&mut [T]> {
        self.bias.as_deref_mut()
    }

    fn affine(&self) -> Affine<'_, T> {
        Affine {
            weight: self.weight(),
            bias: self.bias(),
        }
    }

    /// Checks that `x` has `shape` and that `shape` ends with the normalized shape.
    fn rows(&self, len: usize, shape: &[usize]) -> Result<RowsCols> {
        let rc = RowsCols::with_normalized_shape(shape, &self.config.normalized_shape)?;
        if checked_product(shape) != Some(len) {
            return Err(Error::LengthMismatch {
                operand: crate::Operand::Input,
                expected: rc.len(),
                actual: len,
            });
        }
        Ok(rc)
    }

    /// Normalizes `x` of shape `shape` (which must end with the normalized shape); returns `y`
    /// and the per-row statistics for [`backward`](Self::backward).
    ///
    /// # Errors
    /// [`Error::NormalizedShapeMismatch`], [`Error::LengthMismatch`] if `x.len()` is not the
    /// product of `shape`, [`Error::ZeroSizeDim`].
    pub fn forward(&self, x: &[T], shape: &[usize]) -> Result<(Vec<T>, Stats<T::Compute>)> {
        let rc = self.rows(x.len(), shape)?;
        forward(
            x,
            rc.cols,
            self.affine(),
            self.eps(),
            self.config.parallelism,
        )
    }

    /// [`forward`](Self::forward) into caller-provided buffers, allocating nothing.
    ///
    /// # Errors
    /// As [`forward`](Self::forward), plus [`Error::LengthMismatch`] for wrong-sized buffers.
    pub fn forward_into(
        &self,
        x: &[T],
        shape: &[usize],
        y: &mut [T],
        stats: Option<StatsMut<'_, T::Compute>>,
    ) -> Result<()> {
        let rc = self.rows(x.len(), shape)?;
        let par = self.config.parallelism;
        forward_into(x, rc.cols, self.affine(), self.eps(), y, stats, par)
    }

    /// Gradients for `x`, γ and β (as selected by `mask`; γ/β gradients only where the layer
    /// has them) from the upstream gradient `dy` and the statistics of the forward pass.
    ///
    /// # Errors
    /// As [`forward`](Self::forward), plus [`Error::LengthMismatch`] for `dy` or the statistics.
    pub fn backward(
        &self,
        dy: &[T],
        x: &[T],
        shape: &[usize],
        stats: &Stats<T::Compute>,
        mask: GradMask,
    ) -> Result<Gradients<T>> {
        self.backward_from(dy, x, shape, stats.as_ref(), mask)
    }

    /// [`backward`](Self::backward) with borrowed statistics.
    ///
    /// # Errors
    /// As [`backward`](Self::backward).
    pub fn backward_from(
        &self,
        dy: &[T],
        x: &[T],
        shape: &[usize],
        stats: StatsRef<'_, T::Compute>,
        mask: GradMask,
    ) -> Result<Gradients<T>> {
        let rc = self.rows(x.len(), shape)?;
        let mask = GradMask {
            input: mask.input,
            weight: mask.weight && self.weight.is_some(),
            bias: mask.bias && self.bias.is_some(),
        };
        let par = self.config.parallelism;
        backward(dy, x, rc.cols, stats, self.weight(), mask, par)
    }
}
