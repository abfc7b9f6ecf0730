// The report's charts, drawn with cairo: anti-aliased lines, DejaVu Sans text through cairo's toy
// font API, PNG output from cairo. A Figure is an RGB image; line charts (several series, 1-2-5
// ticks, grid, legend) and heat maps (colour bar, optional cell values) draw into rectangles of it.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

typedef struct _cairo cairo_t;
typedef struct _cairo_surface cairo_surface_t;

namespace dirmoe::plot {

struct Rgb {
  uint8_t r = 0, g = 0, b = 0;
};
inline constexpr Rgb kWhite{255, 255, 255}, kBlack{0, 0, 0};
// Distinct series colours (Tableau 10, matplotlib's default cycle).
Rgb series_color(int i);
// Viridis, t in [0, 1] (clamped).
Rgb colormap(double t);

class Figure {
 public:
  Figure(int width, int height);  // white background
  int width() const { return w_; }
  int height() const { return h_; }
  cairo_t* context() const { return cr_.get(); }
  // Writes an 8-bit RGB PNG; throws an Error naming the file when it cannot.
  void write_png(const std::string& path) const;

 private:
  int w_, h_;
  std::unique_ptr<cairo_surface_t, void (*)(cairo_surface_t*)> surface_;
  std::unique_ptr<cairo_t, void (*)(cairo_t*)> cr_;
};

struct Series {
  std::string name;
  std::vector<double> x, y;  // non-finite points break the line
  Rgb color;
  double width = 2;      // line width in pixels
  double dash = 0;       // > 0: dashed, dash length in pixels
  bool markers = false;  // a dot at every point
};

struct LineChart {
  std::string title, xlabel, ylabel;
  std::vector<Series> series;
  bool y_from_zero = false;
};
void draw_line_chart(Figure& f, double x, double y, double w, double h, const LineChart& chart);

struct Heatmap {
  std::string title, xlabel, ylabel, value_label;
  int rows = 0, cols = 0;
  std::vector<double> values;           // [rows, cols]; NaN cells are drawn grey
  std::vector<std::string> row_labels;  // empty: 0..rows-1
  std::vector<std::string> col_labels;  // empty: numeric axis col_first..col_last (cell centres)
  double col_first = 0, col_last = 0;
  double vmin = 0, vmax = 1;  // colour range
  bool annotate = false;      // print the value in each cell where it fits
  std::string annotate_format = "%.3g";
};
void draw_heatmap(Figure& f, double x, double y, double w, double h, const Heatmap& map);

// Tick positions covering [lo, hi] at a 1-2-5 step, about `target` of them.
std::vector<double> nice_ticks(double lo, double hi, int target);
std::string tick_label(double v, double step);

}  // namespace dirmoe::plot
