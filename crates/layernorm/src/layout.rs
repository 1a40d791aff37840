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

/// Normalization over any set of axes (Keras' `axis=[1, 3]`): the tensor's axes split into
/// the normalized ones and the kept ones, and the permutation that brings the normalized axes
/// to the end (kept axes first, each group in its original order) — after which it is an
/// ordinary `rows × cols` problem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AxesLayout {
    /// The input's shape.
    pub shape: Vec<usize>,
    /// The normalized axes, resolved to `0..rank` and sorted.
    pub axes: Vec<usize>,
    /// The input's axes in the order of the permuted tensor: kept axes, then normalized.
    pub perm: Vec<usize>,
    /// The permuted tensor as rows (kept indices) × cols (normalized indices).
    pub rows_cols: RowsCols,
}

impl AxesLayout {
    /// Resolves `axes` (negative counts from the end) against `shape`.
    ///
    /// # Errors
    /// [`Error::EmptyNormalizedShape`] for no axes, [`Error::AxisOutOfRange`],
    /// [`Error::DuplicateAxis`], [`Error::ZeroSizeDim`], [`Error::SizeOverflow`].
    pub fn new(shape: &[usize], axes: &[isize]) -> Result<Self> {
        if axes.is_empty() {
            return Err(Error::EmptyNormalizedShape);
        }
        let mut resolved = axes
            .iter()
            .map(|&a| resolve_axis(a, shape.len()))
            .collect::<Result<Vec<_>>>()?;
        resolved.sort_unstable();
        if let Some(w) = resolved.windows(2).find(|w| w[0] == w[1]) {
            return Err(Error::DuplicateAxis { axis: w[0] });
        }
        let mut perm: Vec<usize> = (0..shape.len()).filter(|a| !resolved.contains(a)).collect();
        perm.extend(&resolved);
        let permuted: Vec<usize> = perm.iter().map(|&a| shape[a]).collect();
        let rows_cols = RowsCols::split_at(&permuted, shape.len() - resolved.len())?;
        Ok(AxesLayout {
            shape: shape.to_vec(),
            axes: resolved,
            perm,
            rows_cols,
        })
    }

    /// Whether the normalized axes are already the trailing ones (no copy needed).
    pub fn is_trailing(&self) -> bool {
        self.perm.iter().enumerate().all(|(i, &a)| i == a)
    }

    /// The shape of γ/β: the normalized axes' sizes, in axis order.
    pub fn param_shape(&self) -> Vec<usize> {
        self.axes.iter().map(|&a| self.shape[a]).collect()
    }

    /// The shape of the statistics: the kept axes' sizes, in axis order.
    pub fn stats_shape(&self) -> Vec<usize> {
        let kept = self.shape.len() - self.axes.len();
        self.perm[..kept].iter().map(|&a| self.shape[a]).collect()
    }

    /// Copies `src` (in the input's layout) into `dst` in the permuted layout.
    pub(crate) fn to_rows<T: Copy>(&self, src: &[T], dst: &mut [T]) {
        permute(src, &self.shape, &self.perm, dst);
    }

    /// Copies `src` (in the permuted layout) back into `dst` in the input's layout.
    pub(crate) fn restore_rows<T: Copy>(&self, src: &[T], dst: &mut [T]) {
        let permuted: Vec<usize> = self.perm.iter().map(|&a| self.shape[a]).collect();
        let mut inverse = vec![0; self.perm.len()];
        for (i, &a) in self.perm.iter().enumerate() {
            inverse[a] = i;
        }
        permute(src, &permuted, &inverse, dst);
    }
}

/// Side of the square tiles in which [`permute`] transposes (fits L1 for 8-byte elements).
const TILE: usize = 32;

/// `dst[i_0, …, i_k] = src[j]` where `src` has `shape` and `dst` has the axes of `src` in the
/// order `perm` (`dst` axis `d` is `src` axis `perm[d]`). Adjacent axes that stay adjacent
/// are merged, unit axes dropped; contiguous inner runs are copied whole, and a transpose of
/// the two innermost axes goes tile by tile so that both sides stay in cache.
pub(crate) fn permute<T: Copy>(src: &[T], shape: &[usize], perm: &[usize], dst: &mut [T]) {
    debug_assert_eq!(src.len(), dst.len());
    // Source strides, then (size, src stride) per dst axis, merged.
    let mut strides = vec![1; shape.len()];
    for a in (0..shape.len().saturating_sub(1)).rev() {
        strides[a] = strides[a + 1] * shape[a + 1];
    }
    let mut axes: Vec<(usize, usize)> = Vec::new();
    for &a in perm {
        let (n, s) = (shape[a], strides[a]);
        if n == 1 {
            continue;
        }
        match axes.last_mut() {
            Some(last) if last.1 == s * n => *last = (last.0 * n, s),
            _ => axes.push((n, s)),
        }
    }
    let Some(&(inner_n, inner_s)) = axes.last() else {
        dst.copy_from_slice(src);
        return;
    };
    if inner_s == 1 {
        // Contiguous runs: copy them whole.
        let outer = &axes[..axes.len() - 1];
        let mut index = vec![0; outer.len()];
        let mut start = 0;
        for out in dst.chunks_exact_mut(inner_n) {
            out.copy_from_slice(&src[start..start + inner_n]);
            // Next combination of the outer axes (an odometer: no division per run).
            for d in (0..outer.len()).rev() {
                index[d] += 1;
                start += outer[d].1;
                if index[d] < outer[d].0 {
                    break;
                }
                start -= outer[d].0 * outer[d].1;
                index[d] = 0;
            }
        }
        return;
    }
    // The dst axis that is contiguous in src (merging leaves exactly one with stride 1).
    let j = axes.iter().position(|&(_, s)| s == 1).unwrap_or(0);
    let (j_n, j_s) = axes[j];
    let mut dst_strides = vec![1; axes.len()];
    for d in (0..axes.len() - 1).rev() {
        dst_strides[d] = dst_strides[d + 1] * axes[d + 1].0;
    }
    let dj = dst_strides[j];
    let rest: Vec<usize> = (0..axes.len() - 1).filter(|&d| d != j).collect();
    let outer_count: usize = rest.iter().map(|&d| axes[d].0).product();
    for o in 0..outer_count {
        // Offsets of the (j, inner) plane for this combination of the other axes.
        let (mut rem, mut s_base, mut d_base) = (o, 0, 0);
        for &d in rest.iter().rev() {
            let i = rem % axes[d].0;
            rem /= axes[d].0;
            s_base += i * axes[d].1;
            d_base += i * dst_strides[d];
        }
        for jb in (0..j_n).step_by(TILE) {
            for ib in (0..inner_n).step_by(TILE) {
                for jj in jb..(jb + TILE).min(j_n) {
                    let s_row = s_base + jj * j_s;
                    let d_row = d_base + jj * dj;
                    for ii in ib..(ib + TILE).min(inner_n) {
                        dst[d_row + ii] = src[s_row + ii * inner_s];
                    }
                }
            }
        }
    }
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

    /// `permute` against the definition, index by index.
    fn permute_naive(src: &[u32], shape: &[usize], perm: &[usize]) -> Vec<u32> {
        let rank = shape.len();
        let mut strides = vec![1; rank];
        for a in (0..rank.saturating_sub(1)).rev() {
            strides[a] = strides[a + 1] * shape[a + 1];
        }
        let dshape: Vec<usize> = perm.iter().map(|&a| shape[a]).collect();
        (0..src.len())
            .map(|mut i| {
                let mut off = 0;
                for d in (0..rank).rev() {
                    off += (i % dshape[d]) * strides[perm[d]];
                    i /= dshape[d];
                }
                src[off]
            })
            .collect()
    }

    #[test]
    fn permute_matches_its_definition() {
        let cases: &[(&[usize], &[usize])] = &[
            (&[2, 3, 4, 5], &[0, 2, 1, 3]),
            (&[2, 3, 4, 5], &[1, 3, 0, 2]),
            (&[2, 3, 4, 5], &[3, 2, 1, 0]),
            (&[70, 45], &[1, 0]),
            (&[3, 1, 40, 33], &[0, 2, 3, 1]),
            (&[5, 1, 1], &[2, 1, 0]),
            (&[7], &[0]),
            (&[2, 35, 3, 37], &[0, 2, 1, 3]),
            (&[2, 35, 3, 37], &[2, 0, 3, 1]),
        ];
        for &(shape, perm) in cases {
            let n: usize = shape.iter().product();
            let src: Vec<u32> = (0..n as u32).collect();
            let mut dst = vec![0; n];
            permute(&src, shape, perm, &mut dst);
            assert_eq!(dst, permute_naive(&src, shape, perm), "{shape:?} {perm:?}");
        }
    }

    #[test]
    fn axes_layouts_round_trip() {
        let l = AxesLayout::new(&[2, 3, 4, 5], &[3, 1]).unwrap();
        assert_eq!(l.axes, [1, 3]);
        assert_eq!(l.perm, [0, 2, 1, 3]);
        assert_eq!(l.rows_cols, RowsCols { rows: 8, cols: 15 });
        assert_eq!((l.param_shape(), l.stats_shape()), (vec![3, 5], vec![2, 4]));
        assert!(!l.is_trailing());
        assert!(AxesLayout::new(&[2, 3, 4], &[-2, -1])
            .unwrap()
            .is_trailing());
        let src: Vec<u32> = (0..120).collect();
        let (mut rows, mut back) = (vec![0; 120], vec![0; 120]);
        l.to_rows(&src, &mut rows);
        l.restore_rows(&rows, &mut back);
        assert_eq!(back, src);
        assert_eq!(
            AxesLayout::new(&[2, 3], &[1, -1]),
            Err(Error::DuplicateAxis { axis: 1 })
        );
        assert_eq!(
            AxesLayout::new(&[2, 3], &[]),
            Err(Error::EmptyNormalizedShape)
        );
        assert!(matches!(
            AxesLayout::new(&[2, 3], &[2]),
            Err(Error::AxisOutOfRange { .. })
        ));
    }

    #[test]
    fn stats_shape_keeps_rank() {
        assert_eq!(stats_shape(&[2, 3, 4], 1), vec![2, 3, 1]);
        assert_eq!(stats_shape(&[2, 3, 4], 2), vec![2, 1, 1]);
        assert_eq!(stats_shape(&[2, 3, 4], 3), vec![1, 1, 1]);
    }
}
