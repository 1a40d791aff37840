//! Diagrams drawn with plotters, written as SVG and PNG with an embedded font (DejaVu Sans),
//! so they look the same on every machine. Both files of a figure are rendered in memory and
//! written atomically.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Once;

use anyhow::{anyhow, Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::npy::Staged;

/// A figure that can draw itself on any plotters backend.
pub trait Figure {
    /// Pixel size.
    fn size(&self) -> (u32, u32);
    /// Draws onto `root` (already filled white).
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>;
}

/// Turns a plotters error into an anyhow one.
pub fn plot_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing failed: {e:?}")
}

fn register_fonts() {
    static FONTS: Once = Once::new();
    FONTS.call_once(|| {
        // DejaVu ships with the binary: no system fonts needed. Registration only fails on
        // a malformed font file, which these are not; drawing would then report the error.
        let _ = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            dejavu::sans::regular(),
        );
        let _ = plotters::style::register_font("sans-serif", FontStyle::Bold, dejavu::sans::bold());
    });
}

/// Renders `figure` to `DIR/NAME.svg` and `DIR/NAME.png`; returns the two paths.
pub fn write(figure: &impl Figure, dir: &Path, name: &str) -> Result<[PathBuf; 2]> {
    register_fonts();
    let (w, h) = figure.size();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        figure.draw(&root)?;
        root.present().map_err(plot_err)?;
    }
    let mut rgb = vec![0u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        figure.draw(&root)?;
        root.present().map_err(plot_err)?;
    }
    let mut png = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut png, w, h);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().context("encoding PNG")?;
        writer.write_image_data(&rgb).context("encoding PNG")?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let svg_path = dir.join(format!("{name}.svg"));
    let png_path = dir.join(format!("{name}.png"));
    let svg_file = Staged::new(&svg_path, |f| Ok(f.write_all(svg.as_bytes())?))?;
    let png_file = Staged::new(&png_path, |f| Ok(f.write_all(&png)?))?;
    svg_file.commit()?;
    png_file.commit()?;
    Ok([svg_path, png_path])
}

/// Text style helper.
pub fn font(size: u32) -> TextStyle<'static> {
    ("sans-serif", size).into_font().color(&BLACK)
}

/// Bold text style helper.
pub fn bold(size: u32) -> TextStyle<'static> {
    ("sans-serif", size)
        .into_font()
        .style(FontStyle::Bold)
        .color(&BLACK)
}

/// The LayerNorm orange and the BatchNorm blue, used consistently in every figure.
pub const LAYER_COLOR: RGBColor = RGBColor(230, 120, 20);
pub const BATCH_COLOR: RGBColor = RGBColor(40, 100, 200);
