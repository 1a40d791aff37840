//! The `layernorm` binary end to end: the demo, `normalize` on real .npy files, and every
//! kind of bad input (exit status 2, one line on stderr, no output file left behind).

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use npyz::WriterBuilder;

fn layernorm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_layernorm"))
        .args(args)
        .output()
        .unwrap()
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn write_npy<T: npyz::AutoSerialize + Copy>(
    path: &Path,
    shape: &[u64],
    data: &[T],
    order: npyz::Order,
) {
    let file = fs::File::create(path).unwrap();
    let mut w = npyz::WriteOptions::new()
        .default_dtype()
        .shape(shape)
        .order(order)
        .writer(file)
        .begin_nd()
        .unwrap();
    w.extend(data.iter().copied()).unwrap();
    w.finish().unwrap();
}

fn read_npy<T: npyz::Deserialize>(bytes: &[u8]) -> (Vec<u64>, Vec<T>, String) {
    let npy = npyz::NpyFile::new(bytes).unwrap();
    let shape = npy.shape().to_vec();
    let descr = npy.dtype().descr();
    (shape, npy.into_vec().unwrap(), descr)
}

fn read_npz_entry(path: &Path, name: &str) -> Vec<u8> {
    let mut zip = zip::ZipArchive::new(fs::File::open(path).unwrap()).unwrap();
    let mut entry = zip.by_name(&format!("{name}.npy")).unwrap();
    let mut bytes = Vec::new();
    entry.read_to_end(&mut bytes).unwrap();
    bytes
}

/// Per-row f64 LayerNorm of `x` viewed as rows of `cols`, with optional γ and β.
fn reference(x: &[f64], cols: usize, w: Option<&[f64]>, b: Option<&[f64]>, eps: f64) -> Vec<f64> {
    layernorm::reference::layer_norm_forward(x, cols, w, b, eps).0
}

fn ramp(n: usize, a: f64) -> Vec<f64> {
    (0..n)
        .map(|i| ((i * 7919) % 101) as f64 * a - 3.0)
        .collect()
}

struct Dir(tempfile::TempDir);

impl Dir {
    fn new() -> Self {
        Dir(tempfile::tempdir().unwrap())
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }
    fn files(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.0.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }
}

#[test]
fn no_arguments_runs_the_demo() {
    let out = layernorm(&[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("\"I love AI\""), "{text}");
    assert!(text.contains("\"AI is amazing\""));
    assert!(text.contains("[0.10, 0.50]"));
    // "I" = [0.1, 0.5]: mean 0.3, std 0.2, normalized to [−1, 1] (to 3 decimals).
    assert!(text.contains("0.300  0.200   [-1.000,  1.000]"), "{text}");
    assert!(text.contains("(32, 50, 128)"));
    assert!(text.contains("µs"));
}

#[test]
fn normalizes_f32_over_the_last_axis_by_default() {
    let dir = Dir::new();
    let (input, output) = (dir.path("x.npy"), dir.path("y.npy"));
    let x = ramp(2 * 3 * 8, 0.37);
    let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
    write_npy(&input, &[2, 3, 8], &x32, npyz::Order::C);
    let out = layernorm(&["normalize", path_str(&input), "-o", path_str(&output)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (shape, y, descr) = read_npy::<f32>(&fs::read(&output).unwrap());
    assert_eq!((shape, descr.as_str()), (vec![2, 3, 8], "'<f4'"));
    let xf: Vec<f64> = x32.iter().map(|&v| f64::from(v)).collect();
    let want = reference(&xf, 8, None, None, 1e-5);
    for (g, w) in y.iter().zip(&want) {
        // ≤ 5 roundings of 2^-24 on |y| ≤ √8 (see the library's reference tests).
        assert!(
            (f64::from(*g) - w).abs() <= 6.0 * 2f64.powi(-24) * 3.0,
            "{g} vs {w}"
        );
    }
    assert_eq!(dir.files(), ["x.npy", "y.npy"]);
}

#[test]
fn axis_weight_bias_and_stats_follow_onnx() {
    let dir = Dir::new();
    let shape = [2usize, 3, 4];
    let x = ramp(24, 0.5);
    let w: Vec<f64> = (0..12).map(|i| 0.5 + i as f64 / 8.0).collect();
    let b: Vec<f64> = (0..12).map(|i| i as f64 / 10.0 - 0.4).collect();
    write_npy(&dir.path("x.npy"), &[2, 3, 4], &x, npyz::Order::C);
    write_npy(&dir.path("w.npy"), &[3, 4], &w, npyz::Order::C);
    // β as float32: parameters are converted to the input's dtype.
    let b32: Vec<f32> = b.iter().map(|&v| v as f32).collect();
    write_npy(&dir.path("b.npy"), &[3, 4], &b32, npyz::Order::C);
    let (y_path, stats_path) = (dir.path("y.npy"), dir.path("stats.npz"));
    let out = layernorm(&[
        "normalize",
        path_str(&dir.path("x.npy")),
        "-o",
        path_str(&y_path),
        "--axis",
        "-2",
        "--eps",
        "1e-3",
        "--weight",
        path_str(&dir.path("w.npy")),
        "--bias",
        path_str(&dir.path("b.npy")),
        "--stats",
        path_str(&stats_path),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (yshape, y, descr) = read_npy::<f64>(&fs::read(&y_path).unwrap());
    assert_eq!(
        (yshape, descr.as_str()),
        (shape.map(|d| d as u64).to_vec(), "'<f8'")
    );
    let bf: Vec<f64> = b32.iter().map(|&v| f64::from(v)).collect();
    let want = reference(&x, 12, Some(&w), Some(&bf), 1e-3);
    for (g, w) in y.iter().zip(&want) {
        assert!((g - w).abs() <= 1e-14, "{g} vs {w}");
    }
    for (name, expect) in [("mean", [1.5 * 0.5 * 0.0, 0.0]), ("rstd", [0.0, 0.0])] {
        let (st_shape, values, descr) = read_npy::<f32>(&read_npz_entry(&stats_path, name));
        assert_eq!(st_shape, vec![2, 1, 1], "{name}");
        assert_eq!(descr, "'<f4'");
        assert_eq!(values.len(), expect.len());
    }
    let (_, mean, _) = read_npy::<f32>(&read_npz_entry(&stats_path, "mean"));
    let stats = layernorm::reference::layer_norm_stats(&x, 12, 1e-3);
    for (m, (want, _)) in mean.iter().zip(&stats) {
        assert_eq!(*m, *want as f32);
    }
}

#[test]
fn fortran_order_and_big_endian_inputs_read_correctly() {
    let dir = Dir::new();
    // The 3×5 array a[i][j] = i·5 + j, stored column-major.
    let c: Vec<f32> = (0..15).map(|v| v as f32 * 0.25).collect();
    let mut f = vec![0.0f32; 15];
    for i in 0..3 {
        for j in 0..5 {
            f[i + 3 * j] = c[i * 5 + j];
        }
    }
    write_npy(&dir.path("c.npy"), &[3, 5], &c, npyz::Order::C);
    write_npy(&dir.path("f.npy"), &[3, 5], &f, npyz::Order::Fortran);
    {
        let file = fs::File::create(dir.path("be.npy")).unwrap();
        let dtype = npyz::DType::Plain(">f4".parse().unwrap());
        let mut w = npyz::WriteOptions::new()
            .dtype(dtype)
            .shape(&[3, 5])
            .writer(file)
            .begin_nd()
            .unwrap();
        w.extend(c.iter().copied()).unwrap();
        w.finish().unwrap();
    }
    let mut outputs = vec![];
    for name in ["c", "f", "be"] {
        let out_path = dir.path(&format!("{name}.out.npy"));
        let out = layernorm(&[
            "normalize",
            path_str(&dir.path(&format!("{name}.npy"))),
            "-o",
            path_str(&out_path),
        ]);
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        outputs.push(read_npy::<f32>(&fs::read(&out_path).unwrap()).1);
    }
    assert_eq!(outputs[0], outputs[1], "Fortran order");
    assert_eq!(outputs[0], outputs[2], "big endian");
}

/// Runs a failing command and checks the contract: status 2, one line on stderr, and the
/// directory holding exactly the files it held before.
fn assert_clean_failure(dir: &Dir, args: &[&str], needle: &str) {
    let before = dir.files();
    let out = layernorm(args);
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line expected: {stderr:?}");
    assert!(
        stderr.contains(needle),
        "{args:?}: expected {needle:?} in {stderr:?}"
    );
    assert_eq!(dir.files(), before, "{args:?} left files behind");
}

#[test]
fn bad_inputs_exit_2_with_one_line_and_no_output() {
    let dir = Dir::new();
    let x = ramp(12, 1.0);
    write_npy(&dir.path("x.npy"), &[3, 4], &x, npyz::Order::C);
    write_npy(&dir.path("ints.npy"), &[3, 4], &[1i32; 12], npyz::Order::C);
    write_npy(&dir.path("w3.npy"), &[3], &[1.0f64; 3], npyz::Order::C);
    write_npy(
        &dir.path("empty.npy"),
        &[0, 4],
        &[0.0f32; 0],
        npyz::Order::C,
    );
    write_npy(&dir.path("scalar.npy"), &[], &[1.0f32], npyz::Order::C);
    fs::write(dir.path("garbage.npy"), b"this is not an npy file at all").unwrap();
    let whole = fs::read(dir.path("x.npy")).unwrap();
    fs::write(dir.path("truncated.npy"), &whole[..whole.len() - 5]).unwrap();
    // A header claiming 10^12 × 10^6 float32 in a tiny file must fail cleanly, not allocate.
    let mut hostile = whole[..10].to_vec();
    let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000000, 1000000), }";
    let mut header = header.to_string();
    while !(10 + header.len() + 1).is_multiple_of(64) {
        header.push(' ');
    }
    header.push('\n');
    hostile[8..10].copy_from_slice(&(header.len() as u16).to_le_bytes());
    hostile.extend_from_slice(header.as_bytes());
    hostile.extend_from_slice(&[0u8; 16]);
    fs::write(dir.path("hostile.npy"), &hostile).unwrap();

    let x_in = dir.path("x.npy");
    let out = dir.path("out.npy");
    let (x_in, out) = (path_str(&x_in), path_str(&out));
    let p = |name: &str| dir.path(name).to_str().unwrap().to_string();
    assert_clean_failure(
        &dir,
        &["normalize", &p("missing.npy"), "-o", out],
        "cannot open",
    );
    assert_clean_failure(
        &dir,
        &["normalize", &p("garbage.npy"), "-o", out],
        "not a valid .npy",
    );
    assert_clean_failure(
        &dir,
        &["normalize", &p("truncated.npy"), "-o", out],
        "truncated",
    );
    assert_clean_failure(
        &dir,
        &["normalize", &p("hostile.npy"), "-o", out],
        "truncated",
    );
    assert_clean_failure(
        &dir,
        &["normalize", &p("ints.npy"), "-o", out],
        "not a floating-point type",
    );
    assert_clean_failure(
        &dir,
        &["normalize", &p("empty.npy"), "-o", out],
        "zero-size dimension",
    );
    assert_clean_failure(
        &dir,
        &["normalize", &p("scalar.npy"), "-o", out],
        "out of range",
    );
    assert_clean_failure(
        &dir,
        &["normalize", x_in, "-o", out, "--axis", "2"],
        "axis 2 is out of range",
    );
    assert_clean_failure(
        &dir,
        &["normalize", x_in, "-o", out, "--axis", "-3"],
        "axis -3 is out of range",
    );
    assert_clean_failure(
        &dir,
        &["normalize", x_in, "-o", out, "--eps", "0"],
        "epsilon",
    );
    assert_clean_failure(
        &dir,
        &["normalize", x_in, "-o", out, "--eps", "NaN"],
        "epsilon",
    );
    assert_clean_failure(
        &dir,
        &["normalize", x_in, "-o", out, "--eps", "-1"],
        "epsilon",
    );
    assert_clean_failure(
        &dir,
        &["normalize", x_in, "-o", out, "--weight", &p("w3.npy")],
        "expected [4]",
    );
    assert_clean_failure(
        &dir,
        &["normalize", x_in, "-o", out, "--bias", &p("garbage.npy")],
        "bias",
    );
    assert_clean_failure(
        &dir,
        &[
            "normalize",
            x_in,
            "-o",
            out,
            "--stats",
            &p("no/such/dir/stats.npz"),
        ],
        "cannot create",
    );
    assert_clean_failure(
        &dir,
        &["normalize", x_in, "-o", &p("no/such/dir/y.npy")],
        "cannot create",
    );
    assert_clean_failure(&dir, &["normalize", x_in], "--output");
    assert_clean_failure(&dir, &["frobnicate"], "unrecognized subcommand");
}

/// Checks that a PNG decodes, has the expected size, and has dark (text or line) pixels.
fn check_png(path: &Path) {
    let decoder = png::Decoder::new(std::io::BufReader::new(fs::File::open(path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert!(
        info.width >= 400 && info.height >= 200,
        "{}: {}×{}",
        path.display(),
        info.width,
        info.height
    );
    let pixels = &buf[..info.buffer_size()];
    let dark = pixels
        .chunks(3)
        .filter(|p| p.iter().all(|&c| c < 90))
        .count();
    assert!(
        dark > 500,
        "{}: only {dark} dark pixels: no text drawn?",
        path.display()
    );
}

/// Checks that an SVG parses as XML and holds text.
fn check_svg(path: &Path, expect: &str) {
    let text = fs::read_to_string(path).unwrap();
    let doc =
        roxmltree::Document::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let texts: String = doc
        .descendants()
        .filter(|n| n.has_tag_name("text"))
        .filter_map(|n| n.text())
        .collect();
    assert!(
        texts.contains(expect),
        "{}: no {expect:?} in its text",
        path.display()
    );
}

#[test]
fn explain_prints_the_walkthrough_and_writes_the_diagrams() {
    let dir = Dir::new();
    let out = layernorm(&["explain", "--out", path_str(dir.0.path())]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("Step 1") && text.contains("Step 4") && text.contains("BatchNorm"));
    assert_eq!(
        dir.files(),
        [
            "activations_before_after.png",
            "activations_before_after.svg",
            "layernorm_vs_batchnorm.png",
            "layernorm_vs_batchnorm.svg"
        ]
    );
    for name in dir.files() {
        assert!(text.contains(&name), "the path of {name} is printed");
        let path = dir.path(&name);
        if name.ends_with(".png") {
            check_png(&path);
        }
    }
    check_svg(
        &dir.path("layernorm_vs_batchnorm.svg"),
        "LayerNorm: one token",
    );
    check_svg(&dir.path("activations_before_after.svg"), "after LayerNorm");
}

#[test]
fn explain_takes_a_tensor_and_rejects_other_ranks() {
    let dir = Dir::new();
    let x: Vec<f32> = ramp(2 * 4 * 6, 0.3).iter().map(|&v| v as f32).collect();
    write_npy(&dir.path("x.npy"), &[2, 4, 6], &x, npyz::Order::C);
    write_npy(&dir.path("flat.npy"), &[8, 6], &x, npyz::Order::C);
    let out_dir = dir.path("figs");
    let out = layernorm(&[
        "explain",
        "--input",
        path_str(&dir.path("x.npy")),
        "--out",
        path_str(&out_dir),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8(out.stdout)
        .unwrap()
        .contains("(batch 2, seq 4, emb 6)"));
    let before = dir.files();
    let out = layernorm(&[
        "explain",
        "--input",
        path_str(&dir.path("flat.npy")),
        "--out",
        path_str(&out_dir),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8(out.stderr)
        .unwrap()
        .contains("expected a (batch, seq, emb) tensor"));
    assert_eq!(dir.files(), before);
}

#[test]
fn compare_json_reports_zero_for_layer_norm_and_change_for_batch_norm() {
    let dir = Dir::new();
    let out = layernorm(&["compare", "--json", "--out", path_str(dir.0.path())]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 16);
    for row in &rows {
        let diff = row["max_abs_diff"].as_f64().unwrap();
        let setting = row["setting"].as_u64().unwrap();
        let experiment = row["experiment"].as_str().unwrap();
        assert!(experiment == "batch_size" || experiment == "padding");
        let reference = setting == if experiment == "batch_size" { 1 } else { 0 };
        match row["norm"].as_str().unwrap() {
            "layer" => assert_eq!(diff, 0.0, "{row}"),
            "batch" if reference => assert_eq!(diff, 0.0),
            "batch" => assert!(diff > 0.1, "{row}"),
            other => panic!("unknown norm {other}"),
        }
    }
    check_png(&dir.path("compare.png"));
    check_svg(&dir.path("compare.svg"), "BatchNorm");
}

#[test]
fn rms_kind_and_fused_residual() {
    let dir = Dir::new();
    let x = ramp(4 * 6, 0.4);
    let r: Vec<f64> = ramp(4 * 6, 0.1).iter().map(|v| v * 0.5).collect();
    let w: Vec<f64> = (0..6).map(|j| 1.0 + j as f64 / 10.0).collect();
    write_npy(&dir.path("x.npy"), &[4, 6], &x, npyz::Order::C);
    write_npy(&dir.path("r.npy"), &[4, 6], &r, npyz::Order::C);
    write_npy(&dir.path("w.npy"), &[6], &w, npyz::Order::C);
    let p = |name: &str| dir.path(name).to_str().unwrap().to_string();
    let out = layernorm(&[
        "normalize",
        &p("x.npy"),
        "-o",
        &p("y.npy"),
        "--kind",
        "rms",
        "--weight",
        &p("w.npy"),
        "--residual",
        &p("r.npy"),
        "--sum-output",
        &p("s.npy"),
        "--stats",
        &p("st.npz"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, sum, _) = read_npy::<f64>(&fs::read(dir.path("s.npy")).unwrap());
    let want_sum: Vec<f64> = x.iter().zip(&r).map(|(a, b)| a + b).collect();
    assert_eq!(sum, want_sum);
    let (_, y, _) = read_npy::<f64>(&fs::read(dir.path("y.npy")).unwrap());
    let (y_ref, _) = layernorm::reference::rms_norm_forward(&want_sum, 6, Some(&w), 1e-5);
    for (g, w) in y.iter().zip(&y_ref) {
        assert!((g - w).abs() <= 1e-14, "{g} vs {w}");
    }
    // RMSNorm's statistics: rstd only.
    let mut zip = zip::ZipArchive::new(fs::File::open(dir.path("st.npz")).unwrap()).unwrap();
    assert!(zip.by_name("mean.npy").is_err());
    assert!(zip.by_name("rstd.npy").is_ok());

    let x_in = p("x.npy");
    assert_clean_failure(
        &dir,
        &[
            "normalize",
            &x_in,
            "-o",
            &p("o.npy"),
            "--residual",
            &p("r.npy"),
        ],
        "--sum-output",
    );
    assert_clean_failure(
        &dir,
        &[
            "normalize",
            &x_in,
            "-o",
            &p("o.npy"),
            "--kind",
            "rms",
            "--bias",
            &p("w.npy"),
        ],
        "no shift",
    );
    assert_clean_failure(
        &dir,
        &[
            "normalize",
            &x_in,
            "-o",
            &p("o.npy"),
            "--residual",
            &p("w.npy"),
            "--sum-output",
            &p("o2.npy"),
        ],
        "expected [4, 6]",
    );
    assert_clean_failure(
        &dir,
        &["normalize", &x_in, "-o", &p("o.npy"), "--kind", "frob"],
        "invalid value",
    );
}

/// An .npy file with a hand-written header and `data_bytes` zero bytes of data.
fn raw_npy(path: &Path, header: &str, data_bytes: usize) {
    let mut header = header.to_string();
    while !(10 + header.len() + 1).is_multiple_of(64) {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend(std::iter::repeat_n(0u8, data_bytes));
    fs::write(path, bytes).unwrap();
}

#[test]
fn crafted_shapes_and_clashing_outputs_fail_cleanly() {
    let dir = Dir::new();
    // 2^63 + 1 rows of 2: the element count wraps to 2 in a naive product.
    let wrap = "{'descr': '<f4', 'fortran_order': True, 'shape': (9223372036854775809, 2), }";
    raw_npy(&dir.path("wrap.npy"), wrap, 8);
    let wrap3 = "{'descr': '<f4', 'fortran_order': False, 'shape': (9223372036854775809, 2, 1), }";
    raw_npy(&dir.path("wrap3.npy"), wrap3, 8);
    let p = |name: &str| dir.path(name).to_str().unwrap().to_string();
    assert_clean_failure(
        &dir,
        &["normalize", &p("wrap.npy"), "-o", &p("y.npy")],
        "overflows",
    );
    assert_clean_failure(
        &dir,
        &["explain", "--input", &p("wrap3.npy"), "--out", &p("figs")],
        "overflows",
    );

    let x = ramp(6, 1.0);
    write_npy(&dir.path("x.npy"), &[2, 3], &x, npyz::Order::C);
    fs::create_dir(dir.path("folder")).unwrap();
    assert_clean_failure(
        &dir,
        &[
            "normalize",
            &p("x.npy"),
            "-o",
            &p("y.npy"),
            "--stats",
            &p("folder"),
        ],
        "is a folder",
    );
    assert_clean_failure(
        &dir,
        &[
            "normalize",
            &p("x.npy"),
            "-o",
            &p("y.npy"),
            "--stats",
            &p("y.npy"),
        ],
        "two outputs",
    );
    assert_clean_failure(&dir, &["bench", "--threads", "100000000"], "--threads");
    assert_clean_failure(&dir, &["bench", "--shape", "1000000000x1000000000"], "");
}

/// Runs a command that must succeed.
fn assert_success(args: &[&str]) {
    let out = layernorm(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The C-order multi-index of flat position `flat` in `shape`.
fn multi_index(mut flat: usize, shape: &[usize]) -> Vec<usize> {
    let mut index = vec![0; shape.len()];
    for d in (0..shape.len()).rev() {
        index[d] = flat % shape[d];
        flat /= shape[d];
    }
    index
}

/// Statistics of one group of elements: mean, biased variance and count.
#[derive(Clone, Copy, Debug, Default)]
struct GroupStats {
    mean: f64,
    var: f64,
    count: usize,
}

/// Independent normalization: the elements whose multi-index maps to the same `key` share a
/// mean and a biased variance (two plain passes in f64); returns x̂ and the statistics per key.
fn normalize_by_key(
    x: &[f64],
    shape: &[usize],
    keys: usize,
    key: impl Fn(&[usize]) -> usize,
    eps: f64,
) -> (Vec<f64>, Vec<GroupStats>) {
    let k: Vec<usize> = (0..x.len()).map(|i| key(&multi_index(i, shape))).collect();
    let mut stats = vec![GroupStats::default(); keys];
    for (&v, &g) in x.iter().zip(&k) {
        stats[g].mean += v;
        stats[g].count += 1;
    }
    for s in &mut stats {
        s.mean /= s.count as f64;
    }
    for (&v, &g) in x.iter().zip(&k) {
        stats[g].var += (v - stats[g].mean).powi(2);
    }
    for s in &mut stats {
        s.var /= s.count as f64;
    }
    let xhat = x
        .iter()
        .zip(&k)
        .map(|(&v, &g)| (v - stats[g].mean) / (stats[g].var + eps).sqrt())
        .collect();
    (xhat, stats)
}

/// `y = x̂·γ[c] + β[c]` with the channel of each element along `axis`.
fn per_channel_affine(
    xhat: &[f64],
    shape: &[usize],
    axis: usize,
    w: &[f64],
    b: &[f64],
) -> Vec<f64> {
    xhat.iter()
        .enumerate()
        .map(|(i, &v)| {
            let c = multi_index(i, shape)[axis];
            v * w[c] + b[c]
        })
        .collect()
}

fn assert_close(got: &[f64], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * w.abs().max(1.0),
            "{what}[{i}]: {g} vs {w}"
        );
    }
}

/// Reads an f64 .npy output, checking its shape.
fn read_f64(path: &Path, shape: &[u64]) -> Vec<f64> {
    let (got_shape, data, descr) = read_npy::<f64>(&fs::read(path).unwrap());
    assert_eq!((got_shape.as_slice(), descr.as_str()), (shape, "'<f8'"));
    data
}

/// Reads the float32 `mean` and `rstd` of a --stats file, checking their shape.
fn read_stats(path: &Path, shape: &[u64]) -> (Vec<f64>, Vec<f64>) {
    let mut out = vec![];
    for name in ["mean", "rstd"] {
        let (got_shape, data, descr) = read_npy::<f32>(&read_npz_entry(path, name));
        assert_eq!(
            (got_shape.as_slice(), descr.as_str()),
            (shape, "'<f4'"),
            "{name}"
        );
        out.push(data.iter().map(|&v| f64::from(v)).collect());
    }
    let rstd = out.pop().unwrap();
    (out.pop().unwrap(), rstd)
}

/// The rstd of some group statistics.
fn rstds(stats: &[GroupStats], eps: f64) -> Vec<f64> {
    stats.iter().map(|s| 1.0 / (s.var + eps).sqrt()).collect()
}

#[test]
fn layer_over_non_trailing_axes_follows_keras() {
    let dir = Dir::new();
    let p = |name: &str| dir.path(name).to_str().unwrap().to_string();
    let shape = [2usize, 3, 4];
    let x = ramp(24, 0.3);
    let r: Vec<f64> = ramp(24, 0.11).iter().map(|v| v * 0.25).collect();
    // γ/β over the normalized axes 0 and 2: shape (2, 4).
    let w: Vec<f64> = (0..8).map(|i| 0.5 + i as f64 / 8.0).collect();
    let b: Vec<f64> = (0..8).map(|i| i as f64 / 10.0 - 0.3).collect();
    write_npy(&dir.path("x.npy"), &[2, 3, 4], &x, npyz::Order::C);
    write_npy(&dir.path("r.npy"), &[2, 3, 4], &r, npyz::Order::C);
    write_npy(&dir.path("w.npy"), &[2, 4], &w, npyz::Order::C);
    write_npy(&dir.path("b.npy"), &[2, 4], &b, npyz::Order::C);
    assert_success(&[
        "normalize",
        &p("x.npy"),
        "-o",
        &p("y.npy"),
        "--axes",
        "0,2",
        "--eps",
        "1e-3",
        "--weight",
        &p("w.npy"),
        "--bias",
        &p("b.npy"),
        "--stats",
        &p("st.npz"),
    ]);
    let (xhat, stats) = normalize_by_key(&x, &shape, 3, |i| i[1], 1e-3);
    let want: Vec<f64> = xhat
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let m = multi_index(i, &shape);
            v * w[m[0] * 4 + m[2]] + b[m[0] * 4 + m[2]]
        })
        .collect();
    assert_close(&read_f64(&dir.path("y.npy"), &[2, 3, 4]), &want, 1e-13, "y");
    // Statistics keep the rank, with 1 on the normalized axes.
    let (mean, rstd) = read_stats(&dir.path("st.npz"), &[1, 3, 1]);
    let want_mean: Vec<f64> = stats.iter().map(|s| s.mean).collect();
    assert_close(&mean, &want_mean, 1e-6, "mean");
    assert_close(&rstd, &rstds(&stats, 1e-3), 1e-6, "rstd");

    // Negative axes in any order, with the residual add: the sum, then its normalization.
    assert_success(&[
        "normalize",
        &p("x.npy"),
        "-o",
        &p("y2.npy"),
        "--axes=-1,0",
        "--residual",
        &p("r.npy"),
        "--sum-output",
        &p("s2.npy"),
    ]);
    let sum: Vec<f64> = x.iter().zip(&r).map(|(a, b)| a + b).collect();
    assert_eq!(read_f64(&dir.path("s2.npy"), &[2, 3, 4]), sum);
    let (xhat, _) = normalize_by_key(&sum, &shape, 3, |i| i[1], 1e-5);
    assert_close(
        &read_f64(&dir.path("y2.npy"), &[2, 3, 4]),
        &xhat,
        1e-12,
        "y2",
    );

    // --axes over the trailing axes writes what --axis writes, statistics included.
    for (name, flags) in [("a", ["--axes", "1,2"]), ("b", ["--axis", "1"])] {
        assert_success(&[
            "normalize",
            &p("x.npy"),
            "-o",
            &p(&format!("{name}.npy")),
            flags[0],
            flags[1],
            "--stats",
            &p(&format!("{name}.npz")),
        ]);
    }
    assert_eq!(
        fs::read(dir.path("a.npy")).unwrap(),
        fs::read(dir.path("b.npy")).unwrap()
    );
    assert_eq!(
        read_stats(&dir.path("a.npz"), &[2, 1, 1]),
        read_stats(&dir.path("b.npz"), &[2, 1, 1])
    );
}

#[test]
fn batch_eval_uses_the_running_statistics() {
    let dir = Dir::new();
    let p = |name: &str| dir.path(name).to_str().unwrap().to_string();
    // (N, C, L) = (2, 3, 4), channel axis 1 (the default).
    let shape = [2usize, 3, 4];
    let x = ramp(24, 0.2);
    let (rm, rv) = ([0.5f64, -1.0, 2.0], [1.5f64, 0.25, 4.0]);
    let (w, b) = ([1.0, 2.0, 0.5], [0.0, -1.0, 0.25]);
    write_npy(&dir.path("x.npy"), &[2, 3, 4], &x, npyz::Order::C);
    write_npy(&dir.path("rm.npy"), &[3], &rm, npyz::Order::C);
    // The running variance as float32: parameters take the input's dtype.
    write_npy(
        &dir.path("rv.npy"),
        &[3],
        &rv.map(|v| v as f32),
        npyz::Order::C,
    );
    write_npy(&dir.path("w.npy"), &[3], &w, npyz::Order::C);
    write_npy(&dir.path("b.npy"), &[3], &b, npyz::Order::C);
    assert_success(&[
        "normalize",
        &p("x.npy"),
        "-o",
        &p("y.npy"),
        "--kind",
        "batch",
        "--running-mean",
        &p("rm.npy"),
        "--running-var",
        &p("rv.npy"),
        "--weight",
        &p("w.npy"),
        "--bias",
        &p("b.npy"),
        "--eps",
        "1e-3",
    ]);
    let want: Vec<f64> = x
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let c = multi_index(i, &shape)[1];
            (v - rm[c]) / (rv[c] + 1e-3).sqrt() * w[c] + b[c]
        })
        .collect();
    assert_close(&read_f64(&dir.path("y.npy"), &[2, 3, 4]), &want, 1e-13, "y");
    assert_eq!(
        dir.files(),
        ["b.npy", "rm.npy", "rv.npy", "w.npy", "x.npy", "y.npy"]
    );
}

#[test]
fn batch_training_channels_last_updates_the_running_statistics() {
    let dir = Dir::new();
    let p = |name: &str| dir.path(name).to_str().unwrap().to_string();
    // (N, H, C) = (2, 3, 4), channels last: 6 values per channel.
    let shape = [2usize, 3, 4];
    let x = ramp(24, 0.45);
    let (rm, rv) = ([0.0, 1.0, -2.0, 0.5], [1.0, 2.0, 0.5, 3.0]);
    let (w, b) = ([1.0, 0.5, 2.0, -1.0], [0.1, 0.2, 0.3, 0.4]);
    write_npy(&dir.path("x.npy"), &[2, 3, 4], &x, npyz::Order::C);
    write_npy(&dir.path("rm.npy"), &[4], &rm, npyz::Order::C);
    write_npy(&dir.path("rv.npy"), &[4], &rv, npyz::Order::C);
    write_npy(&dir.path("w.npy"), &[4], &w, npyz::Order::C);
    write_npy(&dir.path("b.npy"), &[4], &b, npyz::Order::C);
    assert_success(&[
        "normalize",
        &p("x.npy"),
        "-o",
        &p("y.npy"),
        "--kind",
        "batch",
        "--training",
        "--channel-axis",
        "-1",
        "--running-mean",
        &p("rm.npy"),
        "--running-var",
        &p("rv.npy"),
        "--momentum",
        "0.25",
        "--running-output",
        &p("running.npz"),
        "--weight",
        &p("w.npy"),
        "--bias",
        &p("b.npy"),
        "--stats",
        &p("st.npz"),
    ]);
    let (xhat, stats) = normalize_by_key(&x, &shape, 4, |i| i[2], 1e-5);
    let want = per_channel_affine(&xhat, &shape, 2, &w, &b);
    assert_close(&read_f64(&dir.path("y.npy"), &[2, 3, 4]), &want, 1e-13, "y");
    let (mean, rstd) = read_stats(&dir.path("st.npz"), &[4]);
    let want_mean: Vec<f64> = stats.iter().map(|s| s.mean).collect();
    assert_close(&mean, &want_mean, 1e-6, "mean");
    assert_close(&rstd, &rstds(&stats, 1e-5), 1e-6, "rstd");
    // PyTorch: new = (1 − m)·old + m·batch, the variance unbiased (÷ (n − 1)), in x's dtype.
    let m = 0.25;
    for (name, want) in [
        (
            "running_mean",
            (0..4)
                .map(|c| (1.0 - m) * rm[c] + m * stats[c].mean)
                .collect::<Vec<_>>(),
        ),
        (
            "running_var",
            (0..4)
                .map(|c| {
                    let n = stats[c].count as f64;
                    (1.0 - m) * rv[c] + m * stats[c].var * n / (n - 1.0)
                })
                .collect(),
        ),
    ] {
        let (st_shape, got, descr) =
            read_npy::<f64>(&read_npz_entry(&dir.path("running.npz"), name));
        assert_eq!((st_shape, descr.as_str()), (vec![4], "'<f8'"), "{name}");
        assert_close(&got, &want, 1e-13, name);
    }

    // Without running statistics, channel axis 1 by default, float32 in and out.
    let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
    write_npy(&dir.path("x32.npy"), &[2, 3, 4], &x32, npyz::Order::C);
    assert_success(&[
        "normalize",
        &p("x32.npy"),
        "-o",
        &p("y32.npy"),
        "--kind",
        "batch",
        "--training",
    ]);
    let (_, y32, descr) = read_npy::<f32>(&fs::read(dir.path("y32.npy")).unwrap());
    assert_eq!(descr, "'<f4'");
    let xf: Vec<f64> = x32.iter().map(|&v| f64::from(v)).collect();
    let (want, _) = normalize_by_key(&xf, &shape, 3, |i| i[1], 1e-5);
    let y32: Vec<f64> = y32.iter().map(|&v| f64::from(v)).collect();
    assert_close(&y32, &want, 1e-6, "y32");
}

#[test]
fn group_norm_channels_first_and_last() {
    let dir = Dir::new();
    let p = |name: &str| dir.path(name).to_str().unwrap().to_string();
    let x = ramp(3 * 4 * 2, 0.35);
    let (w, b) = ([1.0, 0.5, 2.0, -1.0], [0.1, 0.2, 0.3, 0.4]);
    write_npy(&dir.path("x.npy"), &[3, 4, 2], &x, npyz::Order::C);
    write_npy(&dir.path("xl.npy"), &[3, 2, 4], &x, npyz::Order::C);
    write_npy(&dir.path("w.npy"), &[4], &w, npyz::Order::C);
    write_npy(&dir.path("b.npy"), &[4], &b, npyz::Order::C);
    // (N, C, L) = (3, 4, 2), 2 groups of 2 channels.
    assert_success(&[
        "normalize",
        &p("x.npy"),
        "-o",
        &p("y.npy"),
        "--kind",
        "group",
        "--groups",
        "2",
        "--weight",
        &p("w.npy"),
        "--bias",
        &p("b.npy"),
        "--stats",
        &p("st.npz"),
    ]);
    let shape = [3usize, 4, 2];
    let (xhat, stats) = normalize_by_key(&x, &shape, 6, |i| i[0] * 2 + i[1] / 2, 1e-5);
    let want = per_channel_affine(&xhat, &shape, 1, &w, &b);
    assert_close(&read_f64(&dir.path("y.npy"), &[3, 4, 2]), &want, 1e-13, "y");
    let (mean, rstd) = read_stats(&dir.path("st.npz"), &[3, 2]);
    let want_mean: Vec<f64> = stats.iter().map(|s| s.mean).collect();
    assert_close(&mean, &want_mean, 1e-6, "mean");
    assert_close(&rstd, &rstds(&stats, 1e-5), 1e-6, "rstd");

    // Channels last: (N, L, C) = (3, 2, 4); a group spans its channels at every position.
    assert_success(&[
        "normalize",
        &p("xl.npy"),
        "-o",
        &p("yl.npy"),
        "--kind",
        "group",
        "--groups",
        "2",
        "--channel-axis",
        "-1",
        "--weight",
        &p("w.npy"),
        "--stats",
        &p("stl.npz"),
    ]);
    let shape = [3usize, 2, 4];
    let (xhat, stats) = normalize_by_key(&x, &shape, 6, |i| i[0] * 2 + i[2] / 2, 1e-5);
    let want = per_channel_affine(&xhat, &shape, 2, &w, &[0.0; 4]);
    assert_close(
        &read_f64(&dir.path("yl.npy"), &[3, 2, 4]),
        &want,
        1e-13,
        "yl",
    );
    let (mean, _) = read_stats(&dir.path("stl.npz"), &[3, 2]);
    let want_mean: Vec<f64> = stats.iter().map(|s| s.mean).collect();
    assert_close(&mean, &want_mean, 1e-6, "mean (channels last)");
}

#[test]
fn instance_norm_normalizes_each_channel_of_each_sample() {
    let dir = Dir::new();
    let p = |name: &str| dir.path(name).to_str().unwrap().to_string();
    // (N, C, H, W) = (2, 3, 2, 2).
    let shape = [2usize, 3, 2, 2];
    let x = ramp(24, 0.6);
    let (w, b) = ([1.5, 0.5, -2.0], [0.0, 1.0, -0.5]);
    write_npy(&dir.path("x.npy"), &[2, 3, 2, 2], &x, npyz::Order::C);
    write_npy(&dir.path("w.npy"), &[3], &w, npyz::Order::C);
    write_npy(&dir.path("b.npy"), &[3], &b, npyz::Order::C);
    assert_success(&[
        "normalize",
        &p("x.npy"),
        "-o",
        &p("y.npy"),
        "--kind",
        "instance",
        "--weight",
        &p("w.npy"),
        "--bias",
        &p("b.npy"),
        "--eps",
        "1e-4",
        "--stats",
        &p("st.npz"),
    ]);
    let (xhat, stats) = normalize_by_key(&x, &shape, 6, |i| i[0] * 3 + i[1], 1e-4);
    let want = per_channel_affine(&xhat, &shape, 1, &w, &b);
    assert_close(
        &read_f64(&dir.path("y.npy"), &[2, 3, 2, 2]),
        &want,
        1e-13,
        "y",
    );
    let (mean, rstd) = read_stats(&dir.path("st.npz"), &[2, 3]);
    let want_mean: Vec<f64> = stats.iter().map(|s| s.mean).collect();
    assert_close(&mean, &want_mean, 1e-6, "mean");
    assert_close(&rstd, &rstds(&stats, 1e-4), 1e-6, "rstd");
}

#[test]
fn family_flags_are_checked_against_the_kind() {
    let dir = Dir::new();
    let p = |name: &str| dir.path(name).to_str().unwrap().to_string();
    write_npy(
        &dir.path("x.npy"),
        &[2, 4, 3],
        &ramp(24, 0.5),
        npyz::Order::C,
    );
    write_npy(&dir.path("one.npy"), &[1, 4], &ramp(4, 0.5), npyz::Order::C);
    write_npy(&dir.path("c4.npy"), &[4], &[1.0f64; 4], npyz::Order::C);
    write_npy(&dir.path("c3.npy"), &[3], &[1.0f64; 3], npyz::Order::C);
    write_npy(&dir.path("c41.npy"), &[4, 1], &[1.0f64; 4], npyz::Order::C);
    write_npy(
        &dir.path("neg.npy"),
        &[4],
        &[1.0, -1.0, 1.0, 1.0],
        npyz::Order::C,
    );
    let (x, y) = (p("x.npy"), p("y.npy"));
    let (c4, c3, c41, neg) = (p("c4.npy"), p("c3.npy"), p("c41.npy"), p("neg.npy"));
    let base = ["normalize", x.as_str(), "-o", y.as_str()];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        // Flags the kind does not use.
        (
            vec!["--groups", "2"],
            "--groups applies to --kind group only, not --kind layer",
        ),
        (
            vec!["--channel-axis", "1"],
            "--channel-axis applies to --kind batch or group or instance only",
        ),
        (
            vec!["--kind", "rms", "--axes", "0"],
            "--axes applies to --kind layer only, not --kind rms",
        ),
        (
            vec!["--kind", "batch", "--axis", "1", "--training"],
            "--axis applies to --kind layer or rms only",
        ),
        (
            vec!["--kind", "group", "--groups", "2", "--training"],
            "--training applies to --kind batch only",
        ),
        (
            vec!["--kind", "instance", "--momentum", "0.5"],
            "--momentum applies to --kind batch only",
        ),
        (
            vec!["--kind", "instance", "--running-mean", &c4],
            "--running-mean applies to --kind batch only",
        ),
        (
            vec!["--kind", "layer", "--running-output", "r.npz"],
            "--running-output applies to --kind batch only",
        ),
        (
            vec!["--kind", "instance", "--groups", "1"],
            "--groups applies to --kind group only",
        ),
        (
            vec![
                "--kind",
                "batch",
                "--training",
                "--residual",
                &c4,
                "--sum-output",
                "s.npy",
            ],
            "--residual applies to --kind layer or rms only, not --kind batch",
        ),
        (vec!["--axes", "0,2", "--axis", "1"], "cannot be used with"),
        (vec!["--kind", "rms", "--bias", &c3], "no shift"),
        // Incomplete combinations.
        (vec!["--kind", "group"], "needs --groups"),
        (
            vec!["--kind", "batch"],
            "eval-mode BatchNorm needs --running-mean and --running-var",
        ),
        (
            vec!["--kind", "batch", "--running-mean", &c4],
            "go together",
        ),
        (
            vec![
                "--kind",
                "batch",
                "--running-mean",
                &c4,
                "--running-var",
                &c4,
                "--stats",
                "s.npz",
            ],
            "no batch statistics",
        ),
        (
            vec![
                "--kind",
                "batch",
                "--running-mean",
                &c4,
                "--running-var",
                &c4,
                "--momentum",
                "0.2",
            ],
            "--momentum needs --training",
        ),
        (
            vec![
                "--kind",
                "batch",
                "--running-mean",
                &c4,
                "--running-var",
                &c4,
                "--running-output",
                "r.npz",
            ],
            "--running-output needs --training",
        ),
        (
            vec!["--kind", "batch", "--training", "--running-output", "r.npz"],
            "--running-output needs --running-mean and --running-var",
        ),
        (
            vec![
                "--kind",
                "batch",
                "--training",
                "--running-mean",
                &c4,
                "--running-var",
                &c4,
            ],
            "only read to write --running-output",
        ),
        (
            vec!["--kind", "batch", "--training", "--momentum", "0.2"],
            "--momentum needs --running-output",
        ),
        // Shapes and values.
        (
            vec!["--kind", "group", "--groups", "3"],
            "3 groups do not divide 4 channels",
        ),
        (
            vec!["--kind", "group", "--groups", "0"],
            "0 groups do not divide 4 channels",
        ),
        (
            vec!["--kind", "instance", "--weight", &c3],
            "expected [4] (one value per channel)",
        ),
        (
            vec!["--kind", "batch", "--training", "--bias", &c41],
            "has shape [4, 1], expected [4]",
        ),
        (
            vec![
                "--kind",
                "batch",
                "--running-mean",
                &c4,
                "--running-var",
                &c3,
            ],
            "running variance",
        ),
        (
            vec![
                "--kind",
                "batch",
                "--running-mean",
                &c4,
                "--running-var",
                &neg,
            ],
            "running variance of channel 1 is -1",
        ),
        (
            vec![
                "--kind",
                "batch",
                "--training",
                "--running-mean",
                &c4,
                "--running-var",
                &c4,
                "--running-output",
                "r.npz",
                "--momentum",
                "1.5",
            ],
            "momentum must lie in [0, 1]",
        ),
        (
            vec!["--weight", &c4],
            "expected [3] (the normalized dims of the input)",
        ),
        (
            vec!["--axes", "0,2", "--weight", &c4],
            "expected [2, 3] (the --axes dims)",
        ),
        (vec!["--axes", "0,-3"], "axis 0 is listed twice"),
        (
            vec!["--kind", "batch", "--training", "--channel-axis", "3"],
            "--channel-axis: axis 3 is out of range",
        ),
        (
            vec!["--kind", "instance", "--channel-axis", "0"],
            "leaves no batch axis",
        ),
    ];
    // Relative output paths in the cases: make them absolute inside the test folder.
    for (extra, needle) in &cases {
        let extra: Vec<String> = extra
            .iter()
            .map(|a| {
                if a.ends_with(".npz") || *a == "s.npy" {
                    p(a)
                } else {
                    a.to_string()
                }
            })
            .collect();
        let mut args: Vec<&str> = base.to_vec();
        args.extend(extra.iter().map(String::as_str));
        assert_clean_failure(&dir, &args, needle);
    }
    // One value per channel cannot give batch statistics (1 sample × 4 channels).
    assert_clean_failure(
        &dir,
        &[
            "normalize",
            &p("one.npy"),
            "-o",
            &y,
            "--kind",
            "batch",
            "--training",
        ],
        "more than one value per channel, got 1",
    );
    // --running-output takes part in the distinct-outputs check.
    assert_clean_failure(
        &dir,
        &[
            "normalize",
            &x,
            "-o",
            &y,
            "--kind",
            "batch",
            "--training",
            "--running-mean",
            &c4,
            "--running-var",
            &c4,
            "--running-output",
            &y,
        ],
        "two outputs",
    );
}

// ---- float16 (`<f2`) ----

use layernorm::f16;

/// Rounds f64 values to f16 (once, to nearest even) and writes them as a `<f2` .npy;
/// returns the stored values, exactly, as f64.
fn write_f16(path: &Path, shape: &[u64], values: &[f64]) -> Vec<f64> {
    let h: Vec<f16> = values.iter().map(|&v| f16::from_f64(v)).collect();
    write_npy(path, shape, &h, npyz::Order::C);
    h.iter().map(|&v| f64::from(v)).collect()
}

/// Reads an f16 .npy output, checking its shape and that its dtype is `<f2`.
fn read_f16(path: &Path, shape: &[u64]) -> Vec<f16> {
    let (got_shape, data, descr) = read_npy::<f16>(&fs::read(path).unwrap());
    assert_eq!(
        (got_shape.as_slice(), descr.as_str()),
        (shape, "'<f2'"),
        "{}",
        path.display()
    );
    data
}

/// Checks an f16 result against the exact (f64) value of the same computation on the same
/// f16 inputs. The kernels compute in f32 and round the result once to f16:
/// |fl16(v) − v| ≤ 2^-11·|v| (normal range; ≤ 2^-25 among subnormals), and the f32 error
/// of v itself (tens of roundings of 2^-24 on terms of magnitude ≤ 8 here, ≈ 10^-5 at most)
/// is covered by 2^-17·max(1, |v|): 1/128 of an f16 ulp on [1, 2). So the result is the
/// correctly rounded value or, when the exact one lies within that margin of a rounding
/// boundary, its neighbour.
fn assert_f16_close(got: &[f16], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let tol = 2f64.powi(-11) * w.abs() + 2f64.powi(-17) * w.abs().max(1.0);
        let g = f64::from(*g);
        assert!(
            (g - w).abs() <= tol,
            "{what}[{i}]: {g} vs {w} (f16 of it: {})",
            f16::from_f64(*w)
        );
    }
}

/// The element-wise sum of two f16-valued vectors, rounded once to f16 (as the fused add).
fn f16_sum(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter()
        .zip(b)
        .map(|(x, y)| f64::from(f16::from_f64(x + y)))
        .collect()
}

#[test]
fn f16_layer_and_rms_with_residual_round_trip() {
    let dir = Dir::new();
    let p = |name: &str| dir.path(name).to_str().unwrap().to_string();
    let x = write_f16(&dir.path("x.npy"), &[2, 3, 8], &ramp(48, 0.37));
    let r = write_f16(
        &dir.path("r.npy"),
        &[2, 3, 8],
        &ramp(48, 0.13).iter().map(|v| v * 0.3).collect::<Vec<_>>(),
    );
    let w_in: Vec<f64> = (0..8).map(|j| 0.75 + j as f64 / 9.0).collect();
    let b_in: Vec<f64> = (0..8).map(|j| j as f64 / 7.0 - 0.5).collect();
    let w = write_f16(&dir.path("w.npy"), &[8], &w_in);
    let b = write_f16(&dir.path("b.npy"), &[8], &b_in);

    // LayerNorm over the last axis, with γ, β and the statistics (float32 whatever the input).
    assert_success(&[
        "normalize",
        &p("x.npy"),
        "-o",
        &p("y.npy"),
        "--weight",
        &p("w.npy"),
        "--bias",
        &p("b.npy"),
        "--stats",
        &p("st.npz"),
    ]);
    let want = reference(&x, 8, Some(&w), Some(&b), 1e-5);
    assert_f16_close(&read_f16(&dir.path("y.npy"), &[2, 3, 8]), &want, "layer");
    let (mean, rstd) = read_stats(&dir.path("st.npz"), &[2, 3, 1]);
    let stats = layernorm::reference::layer_norm_stats(&x, 8, 1e-5);
    let (want_mean, want_rstd): (Vec<f64>, Vec<f64>) = stats.into_iter().unzip();
    assert_close(&mean, &want_mean, 1e-6, "mean");
    assert_close(&rstd, &want_rstd, 1e-6, "rstd");

    // LayerNorm's fused residual add: the sum rounded to f16, then its normalization.
    assert_success(&[
        "normalize",
        &p("x.npy"),
        "-o",
        &p("yl.npy"),
        "--weight",
        &p("w.npy"),
        "--bias",
        &p("b.npy"),
        "--residual",
        &p("r.npy"),
        "--sum-output",
        &p("sl.npy"),
    ]);
    let sum = f16_sum(&x, &r);
    let got_sum: Vec<f64> = read_f16(&dir.path("sl.npy"), &[2, 3, 8])
        .iter()
        .map(|&v| f64::from(v))
        .collect();
    assert_eq!(got_sum, sum, "layer sum");
    let want = reference(&sum, 8, Some(&w), Some(&b), 1e-5);
    assert_f16_close(
        &read_f16(&dir.path("yl.npy"), &[2, 3, 8]),
        &want,
        "layer residual",
    );

    // RMSNorm over the last two axes, with γ of shape (3, 8) and the residual.
    let w2 = write_f16(
        &dir.path("w2.npy"),
        &[3, 8],
        &(0..24).map(|j| 1.25 - j as f64 / 32.0).collect::<Vec<_>>(),
    );
    assert_success(&[
        "normalize",
        &p("x.npy"),
        "-o",
        &p("yr.npy"),
        "--kind",
        "rms",
        "--axis",
        "1",
        "--weight",
        &p("w2.npy"),
        "--residual",
        &p("r.npy"),
        "--sum-output",
        &p("sr.npy"),
        "--stats",
        &p("str.npz"),
    ]);
    let got_sum: Vec<f64> = read_f16(&dir.path("sr.npy"), &[2, 3, 8])
        .iter()
        .map(|&v| f64::from(v))
        .collect();
    assert_eq!(got_sum, sum, "rms sum");
    let (want, want_rstd) = layernorm::reference::rms_norm_forward(&sum, 24, Some(&w2), 1e-5);
    assert_f16_close(&read_f16(&dir.path("yr.npy"), &[2, 3, 8]), &want, "rms");
    let (_, rstd, descr) = read_npy::<f32>(&read_npz_entry(&dir.path("str.npz"), "rstd"));
    assert_eq!(descr, "'<f4'");
    let rstd: Vec<f64> = rstd.iter().map(|&v| f64::from(v)).collect();
    assert_close(&rstd, &want_rstd, 1e-6, "rms rstd");

    // RMSNorm without the residual.
    assert_success(&[
        "normalize",
        &p("x.npy"),
        "-o",
        &p("yr2.npy"),
        "--kind",
        "rms",
        "--weight",
        &p("w.npy"),
    ]);
    let (want, _) = layernorm::reference::rms_norm_forward(&x, 8, Some(&w), 1e-5);
    assert_f16_close(&read_f16(&dir.path("yr2.npy"), &[2, 3, 8]), &want, "rms2");
}

#[test]
fn f16_big_endian_and_fortran_inputs_read_correctly() {
    let dir = Dir::new();
    // The 3×5 array a[i][j], as f16, stored row-major, column-major and big-endian.
    let c: Vec<f16> = ramp(15, 0.61).iter().map(|&v| f16::from_f64(v)).collect();
    let mut f = vec![f16::ZERO; 15];
    for i in 0..3 {
        for j in 0..5 {
            f[i + 3 * j] = c[i * 5 + j];
        }
    }
    write_npy(&dir.path("c.npy"), &[3, 5], &c, npyz::Order::C);
    write_npy(&dir.path("f.npy"), &[3, 5], &f, npyz::Order::Fortran);
    {
        let file = fs::File::create(dir.path("be.npy")).unwrap();
        let dtype = npyz::DType::Plain(">f2".parse().unwrap());
        let mut w = npyz::WriteOptions::new()
            .dtype(dtype)
            .shape(&[3, 5])
            .writer(file)
            .begin_nd()
            .unwrap();
        w.extend(c.iter().copied()).unwrap();
        w.finish().unwrap();
    }
    assert!(fs::read(dir.path("be.npy"))
        .unwrap()
        .windows(5)
        .any(|w| w == b"'>f2'"));
    let mut outputs = vec![];
    for name in ["c", "f", "be"] {
        let out_path = dir.path(&format!("{name}.out.npy"));
        assert_success(&[
            "normalize",
            path_str(&dir.path(&format!("{name}.npy"))),
            "-o",
            path_str(&out_path),
        ]);
        // Written little-endian, C order, whatever the input's layout.
        outputs.push(read_f16(&out_path, &[3, 5]));
    }
    let cf: Vec<f64> = c.iter().map(|&v| f64::from(v)).collect();
    assert_f16_close(&outputs[0], &reference(&cf, 5, None, None, 1e-5), "c");
    assert_eq!(outputs[0], outputs[1], "Fortran order");
    assert_eq!(outputs[0], outputs[2], "big endian");
}

#[test]
fn f16_layer_over_axes_with_residual() {
    let dir = Dir::new();
    let p = |name: &str| dir.path(name).to_str().unwrap().to_string();
    let shape = [2usize, 3, 4];
    let x = write_f16(&dir.path("x.npy"), &[2, 3, 4], &ramp(24, 0.3));
    let r = write_f16(
        &dir.path("r.npy"),
        &[2, 3, 4],
        &ramp(24, 0.11).iter().map(|v| v * 0.25).collect::<Vec<_>>(),
    );
    // γ/β over the normalized axes 0 and 2: shape (2, 4).
    let w = write_f16(
        &dir.path("w.npy"),
        &[2, 4],
        &(0..8).map(|i| 0.5 + i as f64 / 8.0).collect::<Vec<_>>(),
    );
    let b = write_f16(
        &dir.path("b.npy"),
        &[2, 4],
        &(0..8).map(|i| i as f64 / 10.0 - 0.3).collect::<Vec<_>>(),
    );
    let affine = |xhat: &[f64]| -> Vec<f64> {
        xhat.iter()
            .enumerate()
            .map(|(i, &v)| {
                let m = multi_index(i, &shape);
                v * w[m[0] * 4 + m[2]] + b[m[0] * 4 + m[2]]
            })
            .collect()
    };
    assert_success(&[
        "normalize",
        &p("x.npy"),
        "-o",
        &p("y.npy"),
        "--axes",
        "0,2",
        "--eps",
        "1e-3",
        "--weight",
        &p("w.npy"),
        "--bias",
        &p("b.npy"),
        "--stats",
        &p("st.npz"),
    ]);
    let (xhat, stats) = normalize_by_key(&x, &shape, 3, |i| i[1], 1e-3);
    assert_f16_close(
        &read_f16(&dir.path("y.npy"), &[2, 3, 4]),
        &affine(&xhat),
        "y",
    );
    let (mean, rstd) = read_stats(&dir.path("st.npz"), &[1, 3, 1]);
    let want_mean: Vec<f64> = stats.iter().map(|s| s.mean).collect();
    assert_close(&mean, &want_mean, 1e-6, "mean");
    assert_close(&rstd, &rstds(&stats, 1e-3), 1e-6, "rstd");

    // Negative axes in any order, with the residual: the f16 sum, then its normalization.
    assert_success(&[
        "normalize",
        &p("x.npy"),
        "-o",
        &p("y2.npy"),
        "--axes=-1,0",
        "--weight",
        &p("w.npy"),
        "--bias",
        &p("b.npy"),
        "--residual",
        &p("r.npy"),
        "--sum-output",
        &p("s2.npy"),
    ]);
    let sum = f16_sum(&x, &r);
    let got_sum: Vec<f64> = read_f16(&dir.path("s2.npy"), &[2, 3, 4])
        .iter()
        .map(|&v| f64::from(v))
        .collect();
    assert_eq!(got_sum, sum);
    let (xhat, _) = normalize_by_key(&sum, &shape, 3, |i| i[1], 1e-5);
    assert_f16_close(
        &read_f16(&dir.path("y2.npy"), &[2, 3, 4]),
        &affine(&xhat),
        "y2",
    );
}

#[test]
fn f16_batch_training_and_eval() {
    let dir = Dir::new();
    let p = |name: &str| dir.path(name).to_str().unwrap().to_string();
    // (N, C, L) = (2, 3, 4), channel axis 1: 8 values per channel.
    let shape = [2usize, 3, 4];
    let x = write_f16(&dir.path("x.npy"), &[2, 3, 4], &ramp(24, 0.2));
    let rm = write_f16(&dir.path("rm.npy"), &[3], &[0.5, -1.0, 2.1]);
    let rv = write_f16(&dir.path("rv.npy"), &[3], &[1.5, 0.3, 4.0]);
    let w = write_f16(&dir.path("w.npy"), &[3], &[1.0, 2.0, 0.7]);
    let b = write_f16(&dir.path("b.npy"), &[3], &[0.0, -1.0, 0.25]);
    assert_success(&[
        "normalize",
        &p("x.npy"),
        "-o",
        &p("y.npy"),
        "--kind",
        "batch",
        "--training",
        "--running-mean",
        &p("rm.npy"),
        "--running-var",
        &p("rv.npy"),
        "--momentum",
        "0.25",
        "--running-output",
        &p("running.npz"),
        "--weight",
        &p("w.npy"),
        "--bias",
        &p("b.npy"),
        "--stats",
        &p("st.npz"),
    ]);
    let (xhat, stats) = normalize_by_key(&x, &shape, 3, |i| i[1], 1e-5);
    let want = per_channel_affine(&xhat, &shape, 1, &w, &b);
    assert_f16_close(&read_f16(&dir.path("y.npy"), &[2, 3, 4]), &want, "y");
    let (mean, rstd) = read_stats(&dir.path("st.npz"), &[3]);
    let want_mean: Vec<f64> = stats.iter().map(|s| s.mean).collect();
    assert_close(&mean, &want_mean, 1e-6, "mean");
    assert_close(&rstd, &rstds(&stats, 1e-5), 1e-6, "rstd");
    // The running statistics in the input's dtype: f16.
    let m = 0.25;
    let want_rm: Vec<f64> = (0..3)
        .map(|c| (1.0 - m) * rm[c] + m * stats[c].mean)
        .collect();
    let want_rv: Vec<f64> = (0..3)
        .map(|c| {
            let n = stats[c].count as f64;
            (1.0 - m) * rv[c] + m * stats[c].var * n / (n - 1.0)
        })
        .collect();
    for (name, want) in [("running_mean", want_rm), ("running_var", want_rv)] {
        let (st_shape, got, descr) =
            read_npy::<f16>(&read_npz_entry(&dir.path("running.npz"), name));
        assert_eq!((st_shape, descr.as_str()), (vec![3], "'<f2'"), "{name}");
        assert_f16_close(&got, &want, name);
    }

    // Eval mode with the same running statistics.
    assert_success(&[
        "normalize",
        &p("x.npy"),
        "-o",
        &p("ye.npy"),
        "--kind",
        "batch",
        "--running-mean",
        &p("rm.npy"),
        "--running-var",
        &p("rv.npy"),
        "--weight",
        &p("w.npy"),
        "--bias",
        &p("b.npy"),
        "--eps",
        "1e-3",
    ]);
    let want: Vec<f64> = x
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let c = multi_index(i, &shape)[1];
            (v - rm[c]) / (rv[c] + 1e-3).sqrt() * w[c] + b[c]
        })
        .collect();
    assert_f16_close(&read_f16(&dir.path("ye.npy"), &[2, 3, 4]), &want, "eval");
}

#[test]
fn f16_group_and_instance_norm() {
    let dir = Dir::new();
    let p = |name: &str| dir.path(name).to_str().unwrap().to_string();
    // (N, C, L) = (3, 4, 2), 2 groups of 2 channels; then channels last for instance.
    let x = write_f16(&dir.path("x.npy"), &[3, 4, 2], &ramp(24, 0.35));
    let xl = write_f16(&dir.path("xl.npy"), &[3, 2, 4], &ramp(24, 0.35));
    let w = write_f16(&dir.path("w.npy"), &[4], &[1.0, 0.5, 2.0, -1.1]);
    let b = write_f16(&dir.path("b.npy"), &[4], &[0.1, 0.2, 0.3, 0.4]);
    assert_success(&[
        "normalize",
        &p("x.npy"),
        "-o",
        &p("yg.npy"),
        "--kind",
        "group",
        "--groups",
        "2",
        "--weight",
        &p("w.npy"),
        "--bias",
        &p("b.npy"),
        "--stats",
        &p("stg.npz"),
    ]);
    let shape = [3usize, 4, 2];
    let (xhat, stats) = normalize_by_key(&x, &shape, 6, |i| i[0] * 2 + i[1] / 2, 1e-5);
    let want = per_channel_affine(&xhat, &shape, 1, &w, &b);
    assert_f16_close(&read_f16(&dir.path("yg.npy"), &[3, 4, 2]), &want, "group");
    let (mean, rstd) = read_stats(&dir.path("stg.npz"), &[3, 2]);
    let want_mean: Vec<f64> = stats.iter().map(|s| s.mean).collect();
    assert_close(&mean, &want_mean, 1e-6, "group mean");
    assert_close(&rstd, &rstds(&stats, 1e-5), 1e-6, "group rstd");

    assert_success(&[
        "normalize",
        &p("xl.npy"),
        "-o",
        &p("yi.npy"),
        "--kind",
        "instance",
        "--channel-axis",
        "-1",
        "--weight",
        &p("w.npy"),
        "--bias",
        &p("b.npy"),
        "--eps",
        "1e-4",
        "--stats",
        &p("sti.npz"),
    ]);
    let shape = [3usize, 2, 4];
    let (xhat, stats) = normalize_by_key(&xl, &shape, 12, |i| i[0] * 4 + i[2], 1e-4);
    let want = per_channel_affine(&xhat, &shape, 2, &w, &b);
    assert_f16_close(
        &read_f16(&dir.path("yi.npy"), &[3, 2, 4]),
        &want,
        "instance",
    );
    let (mean, rstd) = read_stats(&dir.path("sti.npz"), &[3, 4]);
    let want_mean: Vec<f64> = stats.iter().map(|s| s.mean).collect();
    assert_close(&mean, &want_mean, 1e-6, "instance mean");
    assert_close(&rstd, &rstds(&stats, 1e-4), 1e-6, "instance rstd");
}

#[test]
fn f16_input_takes_wider_parameters_rounded_to_f16() {
    // As for f32 and f64 inputs, γ, β, the residual and the running statistics are rounded to
    // the input's dtype: an f16 input with float32/float64 parameters gives exactly what it
    // gives with those parameters rounded to f16 (and an f16 γ widens exactly for an f32
    // input).
    let dir = Dir::new();
    let p = |name: &str| dir.path(name).to_str().unwrap().to_string();
    write_f16(&dir.path("x.npy"), &[4, 6], &ramp(24, 0.4));
    // 1 + j/3 and j/7 − 0.3 are not f16 values: rounding them changes them.
    let w: Vec<f64> = (0..6).map(|j| 1.0 + j as f64 / 3.0).collect();
    let b: Vec<f64> = (0..6).map(|j| j as f64 / 7.0 - 0.3).collect();
    let r: Vec<f64> = ramp(24, 0.1).iter().map(|v| v / 3.0).collect();
    let w32: Vec<f32> = w.iter().map(|&v| v as f32).collect();
    write_npy(&dir.path("w32.npy"), &[6], &w32, npyz::Order::C);
    write_npy(&dir.path("b64.npy"), &[6], &b, npyz::Order::C);
    write_npy(&dir.path("r64.npy"), &[4, 6], &r, npyz::Order::C);
    let w16 = write_f16(
        &dir.path("w16.npy"),
        &[6],
        &w32.iter().map(|&v| f64::from(v)).collect::<Vec<_>>(),
    );
    write_f16(&dir.path("b16.npy"), &[6], &b);
    write_f16(&dir.path("r16.npy"), &[4, 6], &r);
    for (tag, wf, bf, rf) in [
        ("wide", "w32.npy", "b64.npy", "r64.npy"),
        ("f16", "w16.npy", "b16.npy", "r16.npy"),
    ] {
        assert_success(&[
            "normalize",
            &p("x.npy"),
            "-o",
            &p(&format!("y_{tag}.npy")),
            "--weight",
            &p(wf),
            "--bias",
            &p(bf),
            "--residual",
            &p(rf),
            "--sum-output",
            &p(&format!("s_{tag}.npy")),
        ]);
    }
    for name in ["y", "s"] {
        let wide = read_f16(&dir.path(&format!("{name}_wide.npy")), &[4, 6]);
        let narrow = read_f16(&dir.path(&format!("{name}_f16.npy")), &[4, 6]);
        assert_eq!(wide, narrow, "{name}");
    }

    // An f16 γ with a float32 input: widened exactly, the output stays float32.
    let x32: Vec<f32> = ramp(24, 0.4).iter().map(|&v| v as f32).collect();
    write_npy(&dir.path("x32.npy"), &[4, 6], &x32, npyz::Order::C);
    assert_success(&[
        "normalize",
        &p("x32.npy"),
        "-o",
        &p("y32.npy"),
        "--weight",
        &p("w16.npy"),
    ]);
    let (_, y32, descr) = read_npy::<f32>(&fs::read(dir.path("y32.npy")).unwrap());
    assert_eq!(descr, "'<f4'");
    let xf: Vec<f64> = x32.iter().map(|&v| f64::from(v)).collect();
    let want = reference(&xf, 6, Some(&w16), None, 1e-5);
    let y32: Vec<f64> = y32.iter().map(|&v| f64::from(v)).collect();
    assert_close(&y32, &want, 1e-6, "f32 input, f16 γ");
}

#[test]
fn unsupported_dtypes_name_the_supported_ones() {
    let dir = Dir::new();
    let p = |name: &str| dir.path(name).to_str().unwrap().to_string();
    // float128, an integer type, and a 2-byte void (how bfloat16 arrays end up without a
    // standard dtype).
    raw_npy(
        &dir.path("f128.npy"),
        "{'descr': '<f16', 'fortran_order': False, 'shape': (2,), }",
        32,
    );
    raw_npy(
        &dir.path("i2.npy"),
        "{'descr': '<i2', 'fortran_order': False, 'shape': (2,), }",
        4,
    );
    raw_npy(
        &dir.path("v2.npy"),
        "{'descr': '|V2', 'fortran_order': False, 'shape': (2,), }",
        4,
    );
    let out = p("y.npy");
    assert_clean_failure(
        &dir,
        &["normalize", &p("f128.npy"), "-o", &out],
        "float128 is not supported (float16, float32 or float64 expected)",
    );
    for name in ["i2.npy", "v2.npy"] {
        assert_clean_failure(
            &dir,
            &["normalize", &p(name), "-o", &out],
            "is not a floating-point type (float16, float32 or float64 expected)",
        );
    }
    // A truncated f16 file.
    write_f16(&dir.path("x.npy"), &[3, 4], &ramp(12, 1.0));
    let whole = fs::read(dir.path("x.npy")).unwrap();
    fs::write(dir.path("short.npy"), &whole[..whole.len() - 3]).unwrap();
    assert_clean_failure(
        &dir,
        &["normalize", &p("short.npy"), "-o", &out],
        "truncated",
    );
}

#[test]
fn bench_measures_f16() {
    let out = layernorm(&[
        "bench",
        "--dtype",
        "f16",
        "--shape",
        "4x16",
        "--threads",
        "1",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 4);
    for row in &rows {
        assert_eq!(row["dtype"], "f16", "{row}");
        // 2 bytes per element: forward moves 2·rows·cols of them, backward 3.
        let per_pass = if row["op"] == "forward" { 2.0 } else { 3.0 };
        assert_eq!(
            row["bytes"].as_f64().unwrap(),
            per_pass * 64.0 * 2.0,
            "{row}"
        );
        assert!(row["gbps"].as_f64().unwrap() > 0.0, "{row}");
        // The in-cache figure, for the `into` variants: the whole 4×16 shape is the slice.
        if row["variant"] == "into" {
            assert_eq!(row["cache_bytes"], row["bytes"], "{row}");
            let cache_gbps = row["cache_gbps"].as_f64().unwrap();
            let copy_gbps = row["copy_gbps"].as_f64().unwrap();
            assert!(cache_gbps > 0.0, "{row}");
            let ratio = row["cache_ratio"].as_f64().unwrap();
            assert!(
                (ratio - cache_gbps / copy_gbps).abs() <= 1e-9 * ratio,
                "{row}"
            );
        } else {
            assert!(row.get("cache_gbps").is_none(), "{row}");
        }
    }
}
