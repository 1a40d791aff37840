//! Shapes → the `rows × cols` view every kernel works on.
//!
//! A tensor of shape `(d0, …, dk)` normalized over its trailing dims `(da, …, dk)` is, in
//! row-major memory, `rows = d0·…·d(a−1)` contiguous rows of `cols = da·…·dk` elements.

use crate::error::{Error, Operand, Result};

/// A contiguous tensor seen as `rows` rows of `cols` elements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RowsCols {
    /// Number of independent rows (each gets its own statistics).
    pub rows: usize,
    /// Elements per row: the product of the normalized dimensions.
    pub cols: usize,
}

impl RowsCols {
    /// Total number of elements.
    pub fn len(&self) -> usize {
        self.rows * self.cols
    }

    /// Always false: a `RowsCols` is only built for tensors with at least one element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Views a flat buffer of `len` elements as rows of `normalized_len`: the slice-level
    /// entry points use this.
    ///
    /// # Errors
    /// [`Error::ZeroSizeDim`] if either is zero, [`Error::RaggedInput`] if `len` is not a
    /// multiple of `normalized_len`.
    pub fn from_len(len: usize, normalized_len: usize) -> Result<Self> {
        if normalized_len == 0 {
            return Err(Error::ZeroSizeDim {
                operand: Operand::NormalizedShape,
                shape: vec![0],
            });
        }
        if len == 0 {
            return Err(Error::ZeroSizeDim {
                operand: Operand::Input,
                shape: vec![0],
            });
        }
        if !len.is_multiple_of(normalized_len) {
            return Err(Error::RaggedInput {
                len,
                normalized_len,
            });
        }
        Ok(RowsCols {
            rows: len / normalized_len,
            cols: normalized_len,
        })
    }

    /// Splits `shape` at `axis` with ONNX `LayerNormalization` semantics: the dims
    /// `axis..rank` are normalized; a negative axis counts from the end (−1 = last dim).
    ///
    /// # Errors
    /// [`Error::AxisOutOfRange`], [`Error::ZeroSizeDim`], [`Error::SizeOverflow`].
    pub fn split_at_axis(shape: &[usize], axis: isize) -> Result<Self> {
        let start = resolve_axis(axis, shape.len())?;
        Self::split_at(shape, start)
    }

    /// Checks that `shape` ends with `normalized_shape` (PyTorch semantics) and splits there.
    ///
    /// # Errors
    /// [`Error::EmptyNormalizedShape`], [`Error::NormalizedShapeMismatch`] if the trailing dims
    /// differ,
    /// [`Error::ZeroSizeDim`], [`Error::SizeOverflow`].
    pub fn with_normalized_shape(shape: &[usize], normalized_shape: &[usize]) -> Result<Self> {
        if normalized_shape.is_empty() {
            return Err(Error::EmptyNormalizedShape);
        }
        let k = normalized_shape.len();
        if shape.len() < k || shape[shape.len() - k..] != *normalized_shape {
            return Err(Error::NormalizedShapeMismatch {
                shape: shape.to_vec(),
                normalized_shape: normalized_shape.to_vec(),
            });
        }
        Self::split_at(shape, shape.len() - k)
    }

    fn split_at(shape: &[usize], start: usize) -> Result<Self> {
        if start == shape.len() {
            return Err(Error::EmptyNormalizedShape);
        }
        if shape.contains(&0) {
            return Err(Error::ZeroSizeDim {
                operand: Operand::Input,
                shape: shape.to_vec(),
            });
        }
        let overflow = || Error::SizeOverflow {
            shape: shape.to_vec(),
        };
        let rows = checked_product(&shape[..start]).ok_or_else(overflow)?;
        let cols = checked_product(&shape[start..]).ok_or_else(overflow)?;
        rows.checked_mul(cols).ok_or_else(overflow)?;
        Ok(RowsCols { rows, cols })
    }
}

/// Resolves an ONNX-style axis (negative counts from the end) against `rank`.
///
/// # Errors
/// [`Error::AxisOutOfRange`] unless `-rank <= axis < rank`.
pub fn resolve_axis(axis: isize, rank: usize) -> Result<usize> {
    let out_of_range = Error::AxisOutOfRange { axis, rank };
    let resolved = if axis < 0 {
        rank.checked_sub(axis.unsigned_abs())
    } else {
        Some(axis.unsigned_abs()).filter(|&a| a < rank)
    };
    resolved.ok_or(out_of_range)
}

/// The element count of `shape`, or `None` if it overflows `usize`.
pub fn checked_product(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

/// The shape of saved statistics as PyTorch's `native_layer_norm` returns them: the leading
/// dims of `shape`, then a 1 for each normalized dim.
pub fn stats_shape(shape: &[usize], normalized_rank: usize) -> Vec<usize> {
    let lead = shape.len().saturating_sub(normalized_rank);
    let mut out = shape[..lead].to_vec();
    out.resize(shape.len(), 1);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_semantics_follow_onnx() {
        let s = [2, 3, 4];
        assert_eq!(
            RowsCols::split_at_axis(&s, -1).unwrap(),
            RowsCols { rows: 6, cols: 4 }
        );
        assert_eq!(
            RowsCols::split_at_axis(&s, 1).unwrap(),
            RowsCols { rows: 2, cols: 12 }
        );
        assert_eq!(
            RowsCols::split_at_axis(&s, -3).unwrap(),
            RowsCols { rows: 1, cols: 24 }
        );
        assert_eq!(
            RowsCols::split_at_axis(&s, 3),
            Err(Error::AxisOutOfRange { axis: 3, rank: 3 })
        );
        assert_eq!(
            RowsCols::split_at_axis(&s, -4),
            Err(Error::AxisOutOfRange { axis: -4, rank: 3 })
        );
        assert_eq!(
            RowsCols::split_at_axis(&[], 0),
            Err(Error::AxisOutOfRange { axis: 0, rank: 0 })
        );
        assert_eq!(
            RowsCols::split_at_axis(&s, isize::MIN),
            Err(Error::AxisOutOfRange {
                axis: isize::MIN,
                rank: 3
            })
        );
    }

    #[test]
    fn zero_dims_overflow_and_mismatch_are_errors() {
        assert!(matches!(
            RowsCols::split_at_axis(&[0, 4], -1),
            Err(Error::ZeroSizeDim { .. })
        ));
        assert!(matches!(
            RowsCols::split_at_axis(&[usize::MAX, 2], -1),
            Err(Error::SizeOverflow { .. })
        ));
        assert_eq!(
            RowsCols::with_normalized_shape(&[2, 3], &[]),
            Err(Error::EmptyNormalizedShape)
        );
        assert!(matches!(
            RowsCols::with_normalized_shape(&[2, 3], &[4]),
            Err(Error::NormalizedShapeMismatch { .. })
        ));
        assert!(matches!(
            RowsCols::with_normalized_shape(&[3], &[2, 3]),
            Err(Error::NormalizedShapeMismatch { .. })
        ));
        assert_eq!(
            RowsCols::with_normalized_shape(&[5, 2, 3], &[2, 3]).unwrap(),
            RowsCols { rows: 5, cols: 6 }
        );
        assert_eq!(
            RowsCols::from_len(12, 5),
            Err(Error::RaggedInput {
                len: 12,
                normalized_len: 5
            })
        );
    }

    #[test]
    fn stats_shape_keeps_rank() {
        assert_eq!(stats_shape(&[2, 3, 4], 1), vec![2, 3, 1]);
        assert_eq!(stats_shape(&[2, 3, 4], 2), vec![2, 1, 1]);
        assert_eq!(stats_shape(&[2, 3, 4], 3), vec![1, 1, 1]);
    }
}
