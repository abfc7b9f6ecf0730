// Chart primitives on a Canvas: line charts with nice ticks and a legend, heatmaps with a colour
// bar. Each draws into a rectangle of the canvas, title included.
#pragma once

#include <string>
#include <vector>

#include "launch/report/canvas.h"

namespace dirmoe::plot {

struct Series {
  std::string name;
  std::vector<double> x, y;
  Rgb color;
  int thickness = 2;
  int dash = 0;          // > 0: dashed line
  bool markers = false;  // draw a square at every point
};

struct LineChart {
  std::string title, xlabel, ylabel;
  std::vector<Series> series;
  bool y_from_zero = false;
};
void draw_line_chart(Canvas& c, int x, int y, int w, int h, const LineChart& chart);

struct Heatmap {
  std::string title, xlabel, ylabel, value_label;
  int rows = 0, cols = 0;
  std::vector<double> values;           // [rows, cols]; NaN cells are drawn grey
  std::vector<std::string> row_labels;  // empty: 0..rows-1
  std::vector<std::string> col_labels;  // empty: numeric axis col_first..col_last
  double col_first = 0, col_last = 0;
  double vmin = 0, vmax = 1;  // colour range
  bool annotate = false;      // print the value in each cell (small matrices)
  std::string annotate_format = "%.3g";
};
void draw_heatmap(Canvas& c, int x, int y, int w, int h, const Heatmap& map);

// Tick positions covering [lo, hi] at a 1-2-5 step, about `target` of them.
std::vector<double> nice_ticks(double lo, double hi, int target);
std::string tick_label(double v, double step);

}  // namespace dirmoe::plot
