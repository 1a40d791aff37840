//! Reading and writing `.npy` / `.npz` with npyz and zip, with atomic file output.
//!
//! Inputs are read into C order whatever their layout; outputs are built in a temporary file
//! beside the destination and renamed into place only once complete.

use std::fs::File;
use std::io::{BufReader, BufWriter, Cursor, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use half::f16;
use npyz::{DType, Order, TypeChar, WriterBuilder};
use tempfile::NamedTempFile;

/// A floating-point tensor in C order.
#[derive(Clone, Debug, PartialEq)]
pub enum Tensor {
    F16 { shape: Vec<usize>, data: Vec<f16> },
    F32 { shape: Vec<usize>, data: Vec<f32> },
    F64 { shape: Vec<usize>, data: Vec<f64> },
}

impl Tensor {
    pub fn shape(&self) -> &[usize] {
        match self {
            Tensor::F16 { shape, .. } | Tensor::F32 { shape, .. } | Tensor::F64 { shape, .. } => {
                shape
            }
        }
    }

    /// The values as f64 (exact).
    pub fn to_f64(&self) -> Vec<f64> {
        match self {
            Tensor::F16 { data, .. } => data.iter().map(|&v| f64::from(v)).collect(),
            Tensor::F32 { data, .. } => data.iter().map(|&v| f64::from(v)).collect(),
            Tensor::F64 { data, .. } => data.clone(),
        }
    }
}

/// The dtypes [`read`] accepts, for error messages.
pub const SUPPORTED: &str = "float16, float32 or float64 expected";

/// Reads a float16, float32 or float64 `.npy` file (either byte order, C or Fortran layout).
pub fn read(path: &Path) -> Result<Tensor> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let npy = npyz::NpyFile::new(BufReader::new(file))
        .with_context(|| format!("{} is not a valid .npy file", path.display()))?;
    let shape = npy
        .shape()
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<Result<Vec<usize>, _>>()
        .with_context(|| format!("{}: shape too large", path.display()))?;
    // numpy allows at most 64 dims; npyz multiplies dims with wrap-around, so the element
    // count is checked here before anything relies on it.
    if shape.len() > 64 {
        bail!(
            "{}: {} dimensions (numpy allows at most 64)",
            path.display(),
            shape.len()
        );
    }
    let count = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .with_context(|| {
            format!(
                "{}: the element count of shape {shape:?} overflows",
                path.display()
            )
        })?;
    let order = npy.order();
    let float_size = match npy.dtype() {
        DType::Plain(ts) if ts.type_char() == TypeChar::Float => ts.size_field(),
        other => bail!(
            "{}: dtype {} is not a floating-point type ({SUPPORTED})",
            path.display(),
            other.descr()
        ),
    };
    let truncated = || format!("{}: data is truncated or unreadable", path.display());
    let check_count = |len: usize| {
        if len == count {
            Ok(())
        } else {
            Err(anyhow::anyhow!(
                "{}: holds {len} values for shape {shape:?}",
                path.display()
            ))
        }
    };
    let tensor = match float_size {
        2 => {
            let data = npy.into_vec::<f16>().with_context(truncated)?;
            check_count(data.len())?;
            Tensor::F16 {
                data: to_c_order(data, &shape, order),
                shape,
            }
        }
        4 => {
            let data = npy.into_vec::<f32>().with_context(truncated)?;
            check_count(data.len())?;
            Tensor::F32 {
                data: to_c_order(data, &shape, order),
                shape,
            }
        }
        8 => {
            let data = npy.into_vec::<f64>().with_context(truncated)?;
            check_count(data.len())?;
            Tensor::F64 {
                data: to_c_order(data, &shape, order),
                shape,
            }
        }
        n => bail!(
            "{}: float{} is not supported ({SUPPORTED})",
            path.display(),
            n * 8
        ),
    };
    Ok(tensor)
}

/// Reorders Fortran-order data (first index fastest) into C order (last index fastest).
fn to_c_order<T: Copy>(data: Vec<T>, shape: &[usize], order: Order) -> Vec<T> {
    if order == Order::C || shape.len() < 2 {
        return data;
    }
    let mut f_strides = vec![1usize; shape.len()];
    for i in 1..shape.len() {
        f_strides[i] = f_strides[i - 1] * shape[i - 1];
    }
    let mut out = Vec::with_capacity(data.len());
    let mut index = vec![0usize; shape.len()];
    for _ in 0..data.len() {
        let offset: usize = index.iter().zip(&f_strides).map(|(i, s)| i * s).sum();
        out.push(data[offset]);
        // Advance the C-order multi-index: last dim fastest.
        for d in (0..shape.len()).rev() {
            index[d] += 1;
            if index[d] < shape[d] {
                break;
            }
            index[d] = 0;
        }
    }
    out
}

/// Writes an array as `.npy` into `w`.
pub fn write_npy<T, W>(w: W, shape: &[usize], data: &[T]) -> Result<()>
where
    T: npyz::AutoSerialize + Copy,
    W: Write,
{
    let shape: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
    let mut writer = npyz::WriteOptions::new()
        .default_dtype()
        .shape(&shape)
        .writer(w)
        .begin_nd()?;
    writer.extend(data.iter().copied())?;
    writer.finish()?;
    Ok(())
}

/// Writes a tensor as `.npy` in its own dtype.
pub fn write_tensor<W: Write>(w: W, tensor: &Tensor) -> Result<()> {
    match tensor {
        Tensor::F16 { shape, data } => write_npy(w, shape, data),
        Tensor::F32 { shape, data } => write_npy(w, shape, data),
        Tensor::F64 { shape, data } => write_npy(w, shape, data),
    }
}

/// Writes an `.npz` (uncompressed, as `np.savez`) of named float32 arrays into `w`.
pub fn write_npz<W: Write + std::io::Seek>(
    w: W,
    arrays: &[(&str, &[usize], &[f32])],
) -> Result<()> {
    write_zip(
        w,
        arrays.iter().map(|&(name, shape, data)| {
            let mut bytes = Vec::new();
            write_npy(Cursor::new(&mut bytes), shape, data).map(|()| (name, bytes))
        }),
    )
}

/// Writes an `.npz` (uncompressed) of named tensors, each in its own dtype, into `w`.
pub fn write_npz_tensors<W: Write + std::io::Seek>(w: W, arrays: &[(&str, &Tensor)]) -> Result<()> {
    write_zip(
        w,
        arrays.iter().map(|&(name, tensor)| {
            let mut bytes = Vec::new();
            write_tensor(Cursor::new(&mut bytes), tensor).map(|()| (name, bytes))
        }),
    )
}

/// Stores each `(name, .npy bytes)` as `name.npy` in an uncompressed zip.
fn write_zip<'a, W: Write + std::io::Seek>(
    w: W,
    entries: impl Iterator<Item = Result<(&'a str, Vec<u8>)>>,
) -> Result<()> {
    let mut zip = zip::ZipWriter::new(w);
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .large_file(true);
    for entry in entries {
        let (name, bytes) = entry?;
        zip.start_file(format!("{name}.npy"), options)?;
        zip.write_all(&bytes)?;
    }
    zip.finish()?;
    Ok(())
}

/// A temporary file in `dir`, readable by others as a normally created file would be (the
/// default for temporary files is owner-only, which a renamed output would keep).
fn temp_file(dir: &Path) -> std::io::Result<NamedTempFile> {
    let mut builder = tempfile::Builder::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o644));
    }
    builder.prefix(".layernorm-").tempfile_in(dir)
}

/// An output being written: a temporary file beside its destination, renamed into place by
/// [`Staged::commit`], deleted if dropped uncommitted.
pub struct Staged {
    temp: NamedTempFile,
    dest: PathBuf,
}

impl Staged {
    /// Creates the temporary file and lets `fill` write the whole content into it.
    pub fn new(
        dest: &Path,
        fill: impl FnOnce(&mut BufWriter<&mut File>) -> Result<()>,
    ) -> Result<Self> {
        let dir = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let mut temp =
            temp_file(dir).with_context(|| format!("cannot create a file in {}", dir.display()))?;
        {
            let mut w = BufWriter::new(temp.as_file_mut());
            fill(&mut w).with_context(|| format!("cannot write {}", dest.display()))?;
            w.flush()
                .with_context(|| format!("cannot write {}", dest.display()))?;
        }
        temp.as_file().sync_all().ok();
        Ok(Staged {
            temp,
            dest: dest.to_path_buf(),
        })
    }

    /// Renames the finished file onto its destination.
    pub fn commit(self) -> Result<()> {
        let dest = self.dest;
        self.temp
            .persist(&dest)
            .map_err(|e| e.error)
            .with_context(|| format!("cannot write {}", dest.display()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fortran_order_is_reordered_to_c() {
        // The 2×3 array [[0,1,2],[3,4,5]] stored column-major: 0,3,1,4,2,5.
        let f = vec![0, 3, 1, 4, 2, 5];
        assert_eq!(
            to_c_order(f, &[2, 3], Order::Fortran),
            vec![0, 1, 2, 3, 4, 5]
        );
        // 2×2×2: element (i,j,k) = 4i + 2j + k, stored with i fastest.
        let mut f = vec![0; 8];
        for i in 0..2 {
            for j in 0..2 {
                for k in 0..2 {
                    f[i + 2 * j + 4 * k] = 4 * i + 2 * j + k;
                }
            }
        }
        assert_eq!(
            to_c_order(f, &[2, 2, 2], Order::Fortran),
            (0..8).collect::<Vec<_>>()
        );
    }
}
