// Native time loops of mfm's recurrent scans (see mfm/model/recurrent.py).
//
// The same arithmetic as the Python loops of recurrent.py, with three differences of
// execution only:
//   * each step's gate nonlinearities, state update and masking are one fused pass over
//     the step's rows (instead of several whole-tensor operations and a gather into
//     gate-major order);
//   * the loop itself runs in C++ (no interpreter work per step);
//   * the cells of a scan are independent of one another (each reads only its own
//     state), so with two or more intra-op threads they are split into groups of about
//     equal cost and every group runs its whole time loop on its own thread, each
//     matrix product single-threaded; no step waits for another group. The memory scan
//     has one cell: its rows (samples, equally independent) are split instead.
//
// Layouts (packed rows, see recurrent.Packing): step t owns rows [offsets[t],
// offsets[t] + counts[t]); row r of step t and row r of step t - 1 belong to the same
// sample. H = sum of the cell sizes h_m; cell m owns state columns [off_m, off_m + h_m)
// and gate columns [4 off_m, 4 off_m + 4 h_m), its four gates in order [o, i, f, g]
// (cell-major). Masks are 0/1 multipliers; a masked step carries the previous state.
//
// Registered as torch.ops.mfm_scan.*; built and loaded by mfm/model/native/__init__.py.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <utility>
#include <vector>

namespace {

using at::Tensor;

// ------------------------------------------------------------------ nonlinearities
// float: exp by range reduction and a degree-6 polynomial (about 1 ulp), written with
// plain arithmetic so that the compiler vectorises the loops that use it; double: the
// C library (the tests compare against the reference in double).

inline float exp_approx(float x) {
  x = x < -87.0f ? -87.0f : x;
  x = x > 88.0f ? 88.0f : x;
  const float k = std::floor(x * 1.44269504088896341f + 0.5f);
  float r = x - k * 0.693359375f;
  r = r + k * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(k) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

inline float sigmoid_of(float x) { return 1.0f / (1.0f + exp_approx(-x)); }
inline float tanh_of(float x) { return 2.0f / (1.0f + exp_approx(-2.0f * x)) - 1.0f; }
inline double sigmoid_of(double x) { return 1.0 / (1.0 + std::exp(-x)); }
inline double tanh_of(double x) { return std::tanh(x); }

// ------------------------------------------------------------------ cell groups

struct Layout {
  std::vector<int64_t> size;    // h_m
  std::vector<int64_t> offset;  // off_m
  int64_t total = 0;            // H
};

Layout layout_of(const std::vector<Tensor>& u) {
  Layout l;
  for (const auto& w : u) {
    l.offset.push_back(l.total);
    l.size.push_back(w.size(0));
    l.total += w.size(0);
  }
  return l;
}

// Cells split into at most `threads` groups of about equal cost (h^2 per step: the
// recurrent product), largest first onto the lightest group.
std::vector<std::vector<int64_t>> groups_of(const std::vector<int64_t>& size, int64_t threads) {
  const int64_t cells = static_cast<int64_t>(size.size());
  const int64_t k = std::max<int64_t>(1, std::min(threads, cells));
  std::vector<int64_t> order(cells);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return size[a] > size[b]; });
  std::vector<std::vector<int64_t>> groups(k);
  std::vector<int64_t> load(k, 0);
  for (int64_t m : order) {
    const auto g = std::min_element(load.begin(), load.end()) - load.begin();
    groups[g].push_back(m);
    load[g] += size[m] * size[m] + 8 * size[m];
  }
  std::vector<std::vector<int64_t>> kept;
  for (auto& g : groups) {
    if (!g.empty()) {
      std::sort(g.begin(), g.end());
      kept.push_back(g);
    }
  }
  return kept;
}

// (Splitting the rows of a many-cell scan instead of its cells was measured slower on 2
// threads: half-height products run less efficiently.)

// Rows per share below which splitting a batch costs more in matrix-product efficiency
// than the second thread gains.
constexpr int64_t kMinRowsPerShare = 16;

// A range [first, second) of the sorted rows.
using Rows = std::pair<int64_t, int64_t>;

// The rows of a one-cell scan (the memory) split into at most `threads` contiguous
// ranges. Row r runs at the steps with counts[t] > r (the longest rows come first), so
// the rows are split where the running sum of their steps crosses equal fractions of the
// total.
std::vector<Rows> row_ranges(const std::vector<int64_t>& counts, int64_t threads) {
  const int64_t rows = counts.empty() ? 0 : counts[0];
  const int64_t parts = std::max<int64_t>(1, std::min(threads, rows / kMinRowsPerShare));
  if (parts == 1) return {Rows{0, rows}};
  std::vector<int64_t> work(rows + 1, 0);  // steps of each row, via differences
  for (int64_t n : counts) {
    work[0] += 1;
    work[n] -= 1;
  }
  for (int64_t r = 1; r <= rows; ++r) work[r] += work[r - 1];
  const int64_t total = std::accumulate(work.begin(), work.end() - 1, int64_t(0));
  std::vector<Rows> ranges;
  int64_t start = 0, done = 0;
  for (int64_t r = 0; r < rows && static_cast<int64_t>(ranges.size()) < parts - 1; ++r) {
    done += work[r];
    const int64_t k = static_cast<int64_t>(ranges.size()) + 1;
    if (done * parts >= total * k && r + 1 - start >= kMinRowsPerShare &&
        rows - (r + 1) >= kMinRowsPerShare) {
      ranges.push_back({start, r + 1});
      start = r + 1;
    }
  }
  ranges.push_back({start, rows});
  return ranges;
}

// Runs fn(share) for every share (a group of cells, a range of rows), one thread per
// share when there are several.
template <typename Share, typename Fn>
void for_shares(const std::vector<Share>& shares, const Fn& fn) {
  if (shares.size() <= 1 || at::in_parallel_region()) {
    for (const auto& share : shares) fn(share);
    return;
  }
  // Worker threads start with default thread-local state (grad mode on, ...): give them
  // the caller's, so that the products inside see what the caller's would.
  const at::ThreadLocalState state;
  at::parallel_for(0, static_cast<int64_t>(shares.size()), 1, [&](int64_t begin, int64_t end) {
    at::ThreadLocalStateGuard guard(state);
    for (int64_t k = begin; k < end; ++k) fn(shares[k]);
  });
}

// ------------------------------------------------------------------ LSTM forward

// One row of one cell: g (4h) pre-activations in, post-activations out; c0, h0 the
// previous state (zeros at the first step); with Masked, a is the row's mask (a masked
// unit carries c0 and h0), else a and h0 are not read.
template <typename T, bool Masked>
void lstm_forward_row(T* __restrict g, T* __restrict c, T* __restrict hh, T* __restrict tc,
                      const T* __restrict c0, const T* __restrict h0, const T* __restrict a,
                      int64_t h) {
  for (int64_t j = 0; j < h; ++j) {
    const T og = sigmoid_of(g[j]);
    const T ig = sigmoid_of(g[h + j]);
    const T fg = sigmoid_of(g[2 * h + j]);
    const T gg = tanh_of(g[3 * h + j]);
    g[j] = og;
    g[h + j] = ig;
    g[2 * h + j] = fg;
    g[3 * h + j] = gg;
    const T prev = c0[j];
    T cn = fg * prev + ig * gg;
    if constexpr (Masked) cn = a[j] != T(0) ? cn : prev;
    const T th = tanh_of(cn);
    c[j] = cn;
    tc[j] = th;
    if constexpr (Masked) {
      hh[j] = a[j] != T(0) ? og * th : h0[j];
    } else {
      hh[j] = og * th;
    }
  }
}

template <typename T>
void lstm_forward_cell(int64_t m, const Layout& l, const Tensor& part, const Tensor& u,
                       const std::vector<int64_t>& counts, const std::vector<int64_t>& offsets,
                       const T* active, bool constant, const Tensor& h_out,
                       const Tensor& c_out, const Tensor& tanh_out, const Tensor& gates_out) {
  const int64_t h = l.size[m], off = l.offset[m], H = l.total, G4 = 4 * H;
  T* hp = h_out.data_ptr<T>();
  T* cp = c_out.data_ptr<T>();
  T* tp = tanh_out.data_ptr<T>();
  T* gp = gates_out.data_ptr<T>();
  const T* xp = part.data_ptr<T>();
  const int64_t x_stride = part.stride(0);
  const std::vector<T> zeros(h, T(0));
  const Tensor h_cols = h_out.narrow(1, off, h);
  const Tensor g_cols = gates_out.narrow(1, 4 * off, 4 * h);
  for (size_t t = 0; t < counts.size(); ++t) {
    const int64_t n = counts[t];
    if (n == 0) break;  // counts never grow: no later step has rows
    const int64_t o = offsets[t];
    // The step's input part, row by row into the gate buffer (plain copies: no ATen
    // operator that could start threads of its own), then the recurrent product added
    // in place.
    const int64_t first = constant ? 0 : o;
    for (int64_t r = 0; r < n; ++r) {
      std::memcpy(gp + (o + r) * G4 + 4 * off, xp + (first + r) * x_stride, sizeof(T) * 4 * h);
    }
    if (t > 0) {
      Tensor g_view = g_cols.narrow(0, o, n);
      at::addmm_out(g_view, g_view, h_cols.narrow(0, offsets[t - 1], n), u);
    }
    const int64_t p = t == 0 ? -1 : offsets[t - 1];
    for (int64_t r = 0; r < n; ++r) {
      const int64_t row = o + r;
      const T* c0 = p < 0 ? zeros.data() : cp + (p + r) * H + off;
      T* g = gp + row * G4 + 4 * off;
      const T* h0 = p < 0 ? zeros.data() : hp + (p + r) * H + off;
      if (active == nullptr) {
        lstm_forward_row<T, false>(g, cp + row * H + off, hp + row * H + off,
                                   tp + row * H + off, c0, h0, nullptr, h);
      } else {
        lstm_forward_row<T, true>(g, cp + row * H + off, hp + row * H + off,
                                  tp + row * H + off, c0, h0, active + row * H + off, h);
      }
    }
  }
}

template <typename T>
void lstm_forward_typed(const std::vector<Tensor>& parts, const std::vector<Tensor>& u,
                        const std::vector<int64_t>& counts, const std::vector<int64_t>& offsets,
                        const c10::optional<Tensor>& active, bool constant,
                        const Tensor& h_out, const Tensor& c_out, const Tensor& tanh_out,
                        const Tensor& gates_out) {
  const Layout l = layout_of(u);
  const T* a = active.has_value() ? active->data_ptr<T>() : nullptr;
  for_shares(groups_of(l.size, at::get_num_threads()), [&](const std::vector<int64_t>& cells) {
    for (int64_t m : cells) {
      lstm_forward_cell<T>(m, l, parts[m], u[m], counts, offsets, a, constant, h_out, c_out,
                           tanh_out, gates_out);
    }
  });
}

void check_rows(const Tensor& t, const char* name, int64_t cols) {
  TORCH_CHECK(t.device().is_cpu(), "mfm_scan: ", name, " must be on the CPU");
  TORCH_CHECK(t.dim() == 2 && t.is_contiguous() && t.size(1) == cols, "mfm_scan: ", name,
              " must be a contiguous (N, ", cols, ") tensor");
}

// parts[m]: (N or B, 4 h_m) input part of cell m, stride 1 along columns; u[m]:
// (h_m, 4 h_m) recurrent block (gates_m += h_m @ u_m); active: (N, H) or none. Writes
// h_out, c_out, tanh_out (N, H) and the post-activation gates (N, 4 H), cell-major.
void lstm_forward(const std::vector<Tensor>& parts, const std::vector<Tensor>& u,
                  const std::vector<int64_t>& counts, const std::vector<int64_t>& offsets,
                  const c10::optional<Tensor>& active, bool constant,
                  const Tensor& h_out, const Tensor& c_out, const Tensor& tanh_out,
                  const Tensor& gates_out) {
  TORCH_CHECK(parts.size() == u.size() && !u.empty(), "mfm_scan: one input part per cell");
  TORCH_CHECK(counts.size() + 1 == offsets.size(), "mfm_scan: offsets must have S + 1 entries");
  const Layout l = layout_of(u);
  check_rows(h_out, "h_out", l.total);
  check_rows(c_out, "c_out", l.total);
  check_rows(tanh_out, "tanh_out", l.total);
  check_rows(gates_out, "gates_out", 4 * l.total);
  if (active.has_value()) check_rows(*active, "active", l.total);
  for (size_t m = 0; m < u.size(); ++m) {
    TORCH_CHECK(u[m].is_contiguous() && u[m].size(1) == 4 * u[m].size(0),
                "mfm_scan: recurrent block must be a contiguous (h, 4 h) tensor");
    TORCH_CHECK(parts[m].dim() == 2 && parts[m].size(1) == 4 * u[m].size(0),
                "mfm_scan: input part of the wrong width");
    TORCH_CHECK(parts[m].stride(1) == 1, "mfm_scan: input part must have stride 1 along "
                "its columns");
  }
  AT_DISPATCH_FLOATING_TYPES(h_out.scalar_type(), "mfm_scan.lstm_forward", [&] {
    lstm_forward_typed<scalar_t>(parts, u, counts, offsets, active, constant, h_out, c_out,
                                 tanh_out, gates_out);
  });
}

// ------------------------------------------------------------------ LSTM backward

// One row of one cell's reverse step. dh, dc: the state gradients flowing in from the
// next step, replaced by those flowing out to the previous one (dh without the product
// with the recurrent block, added after); gh, gc: the outputs' own gradients (zeros
// when there are none); a: the mask (ones when none).
template <typename T>
void lstm_backward_row(const T* __restrict g, const T* __restrict tc, const T* __restrict c0,
                       const T* __restrict a, const T* __restrict gh, const T* __restrict gc,
                       T* __restrict dg, T* __restrict dh, T* __restrict dc, int64_t h) {
  for (int64_t j = 0; j < h; ++j) {
    const T dht = dh[j] + gh[j];
    const T dct = dc[j] + gc[j];
    const T on = a[j];
    const T dhn = dht * on;
    const T dcin = dct * on;
    const T og = g[j], ig = g[h + j], fg = g[2 * h + j], gg = g[3 * h + j];
    const T th = tc[j];
    const T prev = c0[j];
    const T dcn = dcin + dhn * (og * (T(1) - th * th));
    dg[j] = dhn * (th * (og - og * og));
    dg[h + j] = dcn * (gg * (ig - ig * ig));
    dg[2 * h + j] = dcn * (prev * (fg - fg * fg));
    dg[3 * h + j] = dcn * (ig * (T(1) - gg * gg));
    dc[j] = (dct - dcin) + dcn * fg;
    dh[j] = dht - dhn;  // what is carried past a masked step (0 where it is real)
  }
}

template <typename T>
void lstm_backward_cell(int64_t m, const Layout& l, const Tensor& u_t,
                        const std::vector<int64_t>& counts, const std::vector<int64_t>& offsets,
                        const T* active, const T* grad_h, const T* grad_c, const T* gates,
                        const T* c_all, const T* tanh_all, const Tensor& d_cells,
                        const Tensor& dh, const Tensor& dc) {
  const int64_t h = l.size[m], off = l.offset[m], H = l.total, G4 = 4 * H;
  T* dgp = d_cells.data_ptr<T>();
  T* dhp = dh.data_ptr<T>();
  T* dcp = dc.data_ptr<T>();
  const std::vector<T> zeros(h, T(0));
  const std::vector<T> ones(h, T(1));
  const Tensor dh_cols = dh.narrow(1, off, h);
  const Tensor dg_cols = d_cells.narrow(1, 4 * off, 4 * h);
  const bool carry = active != nullptr;
  for (int64_t t = static_cast<int64_t>(counts.size()) - 1; t >= 0; --t) {
    const int64_t n = counts[t];
    if (n == 0) continue;
    const int64_t o = offsets[t];
    const int64_t p = t == 0 ? -1 : offsets[t - 1];
    for (int64_t r = 0; r < n; ++r) {
      const int64_t row = o + r;
      lstm_backward_row<T>(gates + row * G4 + 4 * off, tanh_all + row * H + off,
                           p < 0 ? zeros.data() : c_all + (p + r) * H + off,
                           active == nullptr ? ones.data() : active + row * H + off,
                           grad_h == nullptr ? zeros.data() : grad_h + row * H + off,
                           grad_c == nullptr ? zeros.data() : grad_c + row * H + off,
                           dgp + row * G4 + 4 * off, dhp + r * H + off, dcp + r * H + off, h);
    }
    Tensor dh_view = dh_cols.narrow(0, 0, n);
    const Tensor dg_view = dg_cols.narrow(0, o, n);
    if (carry) {
      at::addmm_out(dh_view, dh_view, dg_view, u_t);
    } else {
      at::mm_out(dh_view, dg_view, u_t);
    }
  }
}

// The reverse loop of lstm_forward: from the saved tensors and the gradients of h and c
// (each (N, H) or none) writes the gate pre-activation gradients (N, 4 H) cell-major
// into d_cells; dh and dc are (B, H) zero-initialised state gradients.
void lstm_backward(const std::vector<Tensor>& u, const std::vector<int64_t>& counts,
                   const std::vector<int64_t>& offsets, const c10::optional<Tensor>& active,
                   const c10::optional<Tensor>& grad_h, const c10::optional<Tensor>& grad_c,
                   const Tensor& gates, const Tensor& c_out, const Tensor& tanh_out,
                   const Tensor& d_cells, const Tensor& dh, const Tensor& dc) {
  TORCH_CHECK(counts.size() + 1 == offsets.size(), "mfm_scan: offsets must have S + 1 entries");
  const Layout l = layout_of(u);
  check_rows(gates, "gates", 4 * l.total);
  check_rows(d_cells, "d_cells", 4 * l.total);
  check_rows(c_out, "c_out", l.total);
  check_rows(tanh_out, "tanh_out", l.total);
  check_rows(dh, "dh", l.total);
  check_rows(dc, "dc", l.total);
  if (active.has_value()) check_rows(*active, "active", l.total);
  if (grad_h.has_value()) check_rows(*grad_h, "grad_h", l.total);
  if (grad_c.has_value()) check_rows(*grad_c, "grad_c", l.total);
  std::vector<Tensor> u_t;
  for (const auto& w : u) u_t.push_back(w.t().contiguous());
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "mfm_scan.lstm_backward", [&] {
    using T = scalar_t;
    const T* a = active.has_value() ? active->data_ptr<T>() : nullptr;
    const T* gh = grad_h.has_value() ? grad_h->data_ptr<T>() : nullptr;
    const T* gc = grad_c.has_value() ? grad_c->data_ptr<T>() : nullptr;
    for_shares(groups_of(l.size, at::get_num_threads()),
               [&](const std::vector<int64_t>& cells) {
      for (int64_t m : cells) {
        lstm_backward_cell<T>(m, l, u_t[m], counts, offsets, a, gh, gc, gates.data_ptr<T>(),
                              c_out.data_ptr<T>(), tanh_out.data_ptr<T>(), d_cells, dh, dc);
      }
    });
  });
}

// ------------------------------------------------------------------ memory scan

// Forward of the MFN's gated memory. pre (N, 2G), candidate (N, mem), w_u_t (mem, 2G),
// w1_t, w2_t (G, mem), b1, b2 (mem,), any_active (N, 1) or none, keep (N, 2G) or none.
// Writes u_out (N, mem), hidden_out (N, 2G) (after relu and dropout) and sig_out
// (N, 2 mem) (both gates).
void memory_forward(const Tensor& pre, const Tensor& candidate, const Tensor& w_u_t,
                    const Tensor& w1_t, const Tensor& b1, const Tensor& w2_t, const Tensor& b2,
                    const std::vector<int64_t>& counts, const std::vector<int64_t>& offsets,
                    const c10::optional<Tensor>& any_active, const c10::optional<Tensor>& keep,
                    const Tensor& u_out, const Tensor& hidden_out, const Tensor& sig_out) {
  const int64_t mem = candidate.size(1), G2 = pre.size(1), G = G2 / 2;
  check_rows(pre, "pre", G2);
  check_rows(candidate, "candidate", mem);
  check_rows(u_out, "u_out", mem);
  check_rows(hidden_out, "hidden_out", G2);
  check_rows(sig_out, "sig_out", 2 * mem);
  if (any_active.has_value()) check_rows(*any_active, "any_active", 1);
  if (keep.has_value()) check_rows(*keep, "keep", G2);
  AT_DISPATCH_FLOATING_TYPES(pre.scalar_type(), "mfm_scan.memory_forward", [&] {
    using T = scalar_t;
    const T* any = any_active.has_value() ? any_active->data_ptr<T>() : nullptr;
    const T* kp = keep.has_value() ? keep->data_ptr<T>() : nullptr;
    T* up = u_out.data_ptr<T>();
    T* hid = hidden_out.data_ptr<T>();
    T* sg = sig_out.data_ptr<T>();
    const T* cand = candidate.data_ptr<T>();
    for_shares(row_ranges(counts, at::get_num_threads()), [&](const Rows& rows) {
      const auto [r0, r1] = rows;
      for (size_t t = 0; t < counts.size(); ++t) {
        const int64_t hi = std::min(counts[t], r1);
        if (hi <= r0) break;
        const int64_t n = hi - r0;
        const int64_t o = offsets[t] + r0;  // the range's first row at step t
        const int64_t p = t == 0 ? -1 : offsets[t - 1] + r0;
        Tensor hidden = hidden_out.narrow(0, o, n);
        if (t == 0) {
          hidden.copy_(pre.narrow(0, o, n));
        } else {
          at::addmm_out(hidden, pre.narrow(0, o, n), u_out.narrow(0, p, n), w_u_t);
        }
        for (int64_t r = 0; r < n; ++r) {
          T* __restrict x = hid + (o + r) * G2;
          const T* __restrict k = kp == nullptr ? nullptr : kp + (o + r) * G2;
          for (int64_t j = 0; j < G2; ++j) {
            const T v = x[j] > T(0) ? x[j] : T(0);
            x[j] = k == nullptr ? v : v * k[j];
          }
        }
        Tensor s1 = sig_out.narrow(0, o, n).narrow(1, 0, mem);
        Tensor s2 = sig_out.narrow(0, o, n).narrow(1, mem, mem);
        at::addmm_out(s1, b1, hidden.narrow(1, 0, G), w1_t);
        at::addmm_out(s2, b2, hidden.narrow(1, G, G), w2_t);
        for (int64_t r = 0; r < n; ++r) {
          T* __restrict s = sg + (o + r) * 2 * mem;
          const T* __restrict c = cand + (o + r) * mem;
          const T* __restrict u0 = p < 0 ? nullptr : up + (p + r) * mem;
          T* __restrict u = up + (o + r) * mem;
          const bool on = any == nullptr || any[o + r] != T(0);
          for (int64_t j = 0; j < mem; ++j) {
            const T g1 = sigmoid_of(s[j]);
            const T g2 = sigmoid_of(s[mem + j]);
            s[j] = g1;
            s[mem + j] = g2;
            const T prev = u0 == nullptr ? T(0) : u0[j];
            u[j] = on ? g1 * prev + g2 * c[j] : prev;
          }
        }
      }
    });
  });
}

// Reverse loop of memory_forward. grad_last (N, mem): the gradient entering each row's
// u (its sample's output gradient at its last row). Writes d_new (N, mem) (gradient of
// the new u before carrying), d_sig (N, 2 mem) (gate pre-activation gradients), d_pre
// (N, 2G) (gradient of the first layer's pre-activation); du (B, mem) zero-initialised.
void memory_backward(const Tensor& grad_last, const Tensor& u_out, const Tensor& hidden_out,
                     const Tensor& sig_out, const Tensor& candidate, const Tensor& w_u,
                     const Tensor& w1, const Tensor& w2, const std::vector<int64_t>& counts,
                     const std::vector<int64_t>& offsets,
                     const c10::optional<Tensor>& any_active, const c10::optional<Tensor>& keep,
                     const Tensor& d_new, const Tensor& d_sig, const Tensor& d_pre,
                     const Tensor& du) {
  const int64_t mem = candidate.size(1), G2 = hidden_out.size(1), G = G2 / 2;
  check_rows(grad_last, "grad_last", mem);
  check_rows(u_out, "u_out", mem);
  check_rows(sig_out, "sig_out", 2 * mem);
  check_rows(d_new, "d_new", mem);
  check_rows(d_sig, "d_sig", 2 * mem);
  check_rows(d_pre, "d_pre", G2);
  check_rows(du, "du", mem);
  AT_DISPATCH_FLOATING_TYPES(u_out.scalar_type(), "mfm_scan.memory_backward", [&] {
    using T = scalar_t;
    const T* any = any_active.has_value() ? any_active->data_ptr<T>() : nullptr;
    const T* kp = keep.has_value() ? keep->data_ptr<T>() : nullptr;
    const T* gl = grad_last.data_ptr<T>();
    const T* up = u_out.data_ptr<T>();
    const T* hid = hidden_out.data_ptr<T>();
    const T* sg = sig_out.data_ptr<T>();
    const T* cand = candidate.data_ptr<T>();
    T* dn = d_new.data_ptr<T>();
    T* ds = d_sig.data_ptr<T>();
    T* dp = d_pre.data_ptr<T>();
    T* dup = du.data_ptr<T>();
    for_shares(row_ranges(counts, at::get_num_threads()), [&](const Rows& rows) {
      const auto [r0, r1] = rows;
      for (int64_t t = static_cast<int64_t>(counts.size()) - 1; t >= 0; --t) {
        const int64_t hi = std::min(counts[t], r1);
        if (hi <= r0) continue;
        const int64_t n = hi - r0;
        const int64_t o = offsets[t] + r0;  // the range's first row at step t
        const int64_t p = t == 0 ? -1 : offsets[t - 1] + r0;
        for (int64_t r = 0; r < n; ++r) {
          const int64_t row = o + r;
          const T* __restrict s = sg + row * 2 * mem;
          const T* __restrict c = cand + row * mem;
          const T* __restrict u0 = p < 0 ? nullptr : up + (p + r) * mem;
          const T* __restrict g = gl + row * mem;
          T* __restrict d = dn + row * mem;
          T* __restrict dy = ds + row * 2 * mem;
          T* __restrict dur = dup + (r0 + r) * mem;
          const T on = any == nullptr ? T(1) : any[row];
          for (int64_t j = 0; j < mem; ++j) {
            const T dut = dur[j] + g[j];
            const T dnew = dut * on;
            d[j] = dnew;
            const T g1 = s[j], g2 = s[mem + j];
            const T prev = u0 == nullptr ? T(0) : u0[j];
            dy[j] = dnew * (prev * (g1 - g1 * g1));
            dy[mem + j] = dnew * (c[j] * (g2 - g2 * g2));
            dur[j] = dnew * g1 + (dut - dnew);  // the product with w_u is added below
          }
        }
        Tensor dpre = d_pre.narrow(0, o, n);
        const Tensor dsig = d_sig.narrow(0, o, n);
        Tensor d1 = dpre.narrow(1, 0, G);
        Tensor d2 = dpre.narrow(1, G, G);
        at::mm_out(d1, dsig.narrow(1, 0, mem), w1);
        at::mm_out(d2, dsig.narrow(1, mem, mem), w2);
        for (int64_t r = 0; r < n; ++r) {
          const int64_t row = o + r;
          const T* __restrict x = hid + row * G2;
          const T* __restrict k = kp == nullptr ? nullptr : kp + row * G2;
          T* __restrict y = dp + row * G2;
          for (int64_t j = 0; j < G2; ++j) {
            const T gate = x[j] > T(0) ? (k == nullptr ? T(1) : k[j]) : T(0);
            y[j] = y[j] * gate;
          }
        }
        Tensor du_view = du.narrow(0, r0, n);
        at::addmm_out(du_view, du_view, dpre, w_u);
      }
    });
  });
}

}  // namespace

TORCH_LIBRARY(mfm_scan, m) {
  m.def("lstm_forward(Tensor[] parts, Tensor[] u, int[] counts, int[] offsets, Tensor? active, "
        "bool constant, Tensor(a!) h_out, Tensor(b!) c_out, "
        "Tensor(c!) tanh_out, Tensor(d!) gates_out) -> ()");
  m.def("lstm_backward(Tensor[] u, int[] counts, int[] offsets, Tensor? active, "
        "Tensor? grad_h, Tensor? grad_c, Tensor gates, Tensor c_out, Tensor tanh_out, "
        "Tensor(a!) d_cells, Tensor(b!) dh, Tensor(c!) dc) -> ()");
  m.def("memory_forward(Tensor pre, Tensor candidate, Tensor w_u_t, Tensor w1_t, Tensor b1, "
        "Tensor w2_t, Tensor b2, int[] counts, int[] offsets, Tensor? any_active, "
        "Tensor? keep, Tensor(a!) u_out, Tensor(b!) hidden_out, Tensor(c!) sig_out) -> ()");
  m.def("memory_backward(Tensor grad_last, Tensor u_out, Tensor hidden_out, Tensor sig_out, "
        "Tensor candidate, Tensor w_u, Tensor w1, Tensor w2, int[] counts, int[] offsets, "
        "Tensor? any_active, Tensor? keep, Tensor(a!) d_new, Tensor(b!) d_sig, "
        "Tensor(c!) d_pre, Tensor(d!) du) -> ()");
}

TORCH_LIBRARY_IMPL(mfm_scan, CPU, m) {
  m.impl("lstm_forward", &lstm_forward);
  m.impl("lstm_backward", &lstm_backward);
  m.impl("memory_forward", &memory_forward);
  m.impl("memory_backward", &memory_backward);
}
