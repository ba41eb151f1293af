//! The report's PNG: score distribution (all vs kept rows, with the
//! threshold) and cluster sizes (sorted, with kept counts); after SemDeDup
//! also the eps → kept curve, and for DBP the quota of every cluster
//! against its size. Drawn with
//! plotters on an in-memory bitmap. The font (DejaVu Sans, Bitstream Vera
//! licence, see `src/assets/`) is embedded so plots render on machines
//! without fontconfig.

use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;

use crate::io::AtomicFile;
use crate::pipeline::report::Report;
use crate::{Error, Result};

const FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
const PANEL_WIDTH: u32 = 700;
const HEIGHT: u32 = 560;
const ALL: RGBColor = RGBColor(170, 170, 170);
const KEPT: RGBColor = RGBColor(31, 119, 180);

pub(crate) fn register() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Registration only fails for a malformed font, which is embedded and tested.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

pub(crate) fn plot_err(e: impl std::fmt::Display) -> Error {
    Error::Internal(format!("drawing the plot: {e}"))
}

/// Renders the report plot to `path` (PNG, written atomically).
pub fn write_report_png(report: &Report, path: &Path) -> Result<()> {
    register();
    let has_dbp = report.clusters.iter().any(|c| c.quota.is_some());
    let panels = 2 + report.semdedup.is_some() as u32 + has_dbp as u32;
    let width = PANEL_WIDTH * panels;
    let mut buf = vec![0u8; (width * HEIGHT * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (width, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let title = format!(
            "dprune filter: kept {} of {} rows ({:.1}%), metric {}",
            report.n_kept,
            report.n_rows,
            100.0 * report.n_kept as f64 / report.n_rows.max(1) as f64,
            report.params.metric
        );
        let root = root.titled(&title, ("sans-serif", 24)).map_err(plot_err)?;
        let areas = root.split_evenly((1, panels as usize));
        draw_scores(report, &areas[0])?;
        draw_clusters(report, &areas[1])?;
        let mut next = 2;
        if report.semdedup.is_some() {
            draw_eps_curve(report, &areas[next])?;
            next += 1;
        }
        if has_dbp {
            draw_quotas(report, &areas[next])?;
        }
        root.present().map_err(plot_err)?;
    }
    let img = image_png(&buf, width)?;
    let atomic = AtomicFile::new(path)?;
    std::fs::write(atomic.tmp_path(), img).map_err(|e| Error::io("writing", path, e))?;
    atomic.commit()
}

fn draw_scores<DB: DrawingBackend>(report: &Report, area: &DrawingArea<DB, plotters::coord::Shift>) -> Result<()> {
    let Some(s) = &report.scores else {
        return Ok(());
    };
    let h = &s.histogram;
    let bins = h.all.len().max(1);
    let (lo, hi) = if h.hi > h.lo {
        (h.lo, h.hi)
    } else {
        (h.lo - 0.5, h.lo + 0.5)
    };
    let width = (hi - lo) / bins as f32;
    let ymax = h.all.iter().copied().max().unwrap_or(1).max(1) as f64 * 1.05;
    let mut chart = ChartBuilder::on(area)
        .caption(format!("score distribution ({})", s.metric), ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(lo..hi, 0f64..ymax)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc("score (1 - cos to nearest centroid; higher = harder)")
        .y_desc("rows")
        .y_label_formatter(&|v| format!("{v:.0}"))
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(plot_err)?;
    for (series, color, label) in [(&h.all, ALL, "all rows"), (&h.kept, KEPT, "kept rows")] {
        chart
            .draw_series(series.iter().enumerate().map(|(i, &c)| {
                let x0 = lo + i as f32 * width;
                Rectangle::new([(x0, 0.0), (x0 + width, c as f64)], color.filled())
            }))
            .map_err(plot_err)?
            .label(label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
    }
    if let Some(t) = s.threshold {
        chart
            .draw_series(LineSeries::new([(t, 0.0), (t, ymax)], RED.stroke_width(2)))
            .map_err(plot_err)?
            .label(format!("threshold {t:.4}"))
            .legend(|(x, y)| PathElement::new([(x, y), (x + 12, y)], RED.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(plot_err)?;
    Ok(())
}

fn draw_clusters<DB: DrawingBackend>(report: &Report, area: &DrawingArea<DB, plotters::coord::Shift>) -> Result<()> {
    // Bars per cluster sorted by size; without clusters, per input file.
    let (mut bars, caption, xdesc): (Vec<(u64, u64)>, &str, &str) = if report.clusters.is_empty() {
        (
            report.inputs.iter().map(|i| (i.rows, i.kept)).collect(),
            "rows per input file",
            "input file",
        )
    } else {
        (
            report.clusters.iter().map(|c| (c.size, c.kept)).collect(),
            "cluster sizes (sorted)",
            "cluster rank",
        )
    };
    bars.sort_by_key(|b| std::cmp::Reverse(b.0));
    let n = bars.len().max(1);
    let ymax = bars.first().map_or(1, |b| b.0).max(1) as f64 * 1.05;
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..n as f64, 0f64..ymax)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc(xdesc)
        .y_desc("rows")
        .y_label_formatter(&|v| format!("{v:.0}"))
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(plot_err)?;
    for (pick, color, label) in [(0usize, ALL, "rows"), (1, KEPT, "kept")] {
        chart
            .draw_series(bars.iter().enumerate().map(|(i, b)| {
                let v = if pick == 0 { b.0 } else { b.1 };
                Rectangle::new([(i as f64, 0.0), (i as f64 + 0.9, v as f64)], color.filled())
            }))
            .map_err(plot_err)?
            .label(label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(plot_err)?;
    Ok(())
}

/// SemDeDup: rows kept at every eps of the curve (log eps axis).
fn draw_eps_curve<DB: DrawingBackend>(report: &Report, area: &DrawingArea<DB, plotters::coord::Shift>) -> Result<()> {
    let Some(sd) = &report.semdedup else { return Ok(()) };
    let pts: Vec<(f64, f64)> = sd
        .eps_curve
        .iter()
        .filter(|p| p.eps > 0.0)
        .map(|p| (p.eps.log10(), p.kept as f64))
        .collect();
    let (x0, x1) = pts
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (x0, x1) = if x0 < x1 { (x0, x1) } else { (x0 - 1.0, x0 + 1.0) };
    let ymax = pts.iter().map(|p| p.1).fold(1.0, f64::max) * 1.05;
    let mut chart = ChartBuilder::on(area)
        .caption("SemDeDup: rows kept vs eps", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(x0..x1, 0f64..ymax)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc("eps (log scale)")
        .y_desc("rows kept")
        .x_label_formatter(&|v| format!("{:.2e}", 10f64.powf(*v)))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(plot_err)?;
    chart
        .draw_series(LineSeries::new(pts.iter().copied(), KEPT.stroke_width(2)))
        .map_err(plot_err)?;
    chart
        .draw_series(pts.iter().map(|&p| Circle::new(p, 4, KEPT.filled())))
        .map_err(plot_err)?;
    if let Some(eps) = sd.eps.filter(|&e| e > 0.0) {
        let x = eps.log10();
        chart
            .draw_series(LineSeries::new([(x, 0.0), (x, ymax)], RED.stroke_width(1)))
            .map_err(plot_err)?;
    }
    Ok(())
}

/// DBP: every cluster's quota against its size.
fn draw_quotas<DB: DrawingBackend>(report: &Report, area: &DrawingArea<DB, plotters::coord::Shift>) -> Result<()> {
    let pts: Vec<(f64, f64)> = report
        .clusters
        .iter()
        .filter_map(|c| c.quota.map(|q| (c.size as f64, q as f64)))
        .collect();
    let xmax = pts.iter().map(|p| p.0).fold(1.0, f64::max) * 1.05;
    let ymax = pts.iter().map(|p| p.1).fold(1.0, f64::max) * 1.05;
    let mut chart = ChartBuilder::on(area)
        .caption("DBP: quota vs cluster size", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..xmax, 0f64..ymax)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc("cluster size (rows)")
        .y_desc("quota (rows kept)")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(plot_err)?;
    let m = xmax.min(ymax);
    chart
        .draw_series(LineSeries::new([(0.0, 0.0), (m, m)], ALL.stroke_width(1)))
        .map_err(plot_err)?;
    chart
        .draw_series(pts.iter().map(|&p| Circle::new(p, 3, KEPT.filled())))
        .map_err(plot_err)?;
    Ok(())
}

/// Encodes an RGB buffer as PNG bytes.
fn image_png(rgb: &[u8], width: u32) -> Result<Vec<u8>> {
    png_bytes(rgb, width, HEIGHT)
}

/// Encodes a `width × height` RGB buffer as PNG bytes.
pub(crate) fn png_bytes(rgb: &[u8], width: u32, height: u32) -> Result<Vec<u8>> {
    use image::ImageEncoder;
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(rgb, width, height, image::ColorType::Rgb8)
        .map_err(plot_err)?;
    Ok(out)
}
