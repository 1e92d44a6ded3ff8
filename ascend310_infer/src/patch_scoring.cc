#include "patch_scoring.h"

#include <faiss/Index.h>
#include <faiss/index_io.h>

#include <omp.h>

#include <stdexcept>

#include "npy.h"

namespace patchcore {

PatchScorer::PatchScorer(const std::string &bank_path, int num_nn, int threads)
    : bank_path_(bank_path), num_nn_(num_nn) {
  omp_set_num_threads(threads);  // faiss parallelises its search with OpenMP
  try {
    index_.reset(faiss::read_index(bank_path.c_str()));
  } catch (const std::exception &error) {
    // faiss messages span several lines; keep the first for a one-line error.
    std::string what = error.what();
    throw std::runtime_error(bank_path + ": cannot read faiss index (" + what.substr(0, what.find('\n')) + ")");
  }
  if (index_->ntotal < num_nn) {
    throw std::runtime_error(bank_path + ": index holds " + std::to_string(index_->ntotal) +
                             " vectors, fewer than --num_nn " + std::to_string(num_nn));
  }
}

PatchScorer::~PatchScorer() = default;

void PatchScorer::CheckFeatureShape(const std::vector<int64_t> &shape) const {
  if (shape.size() != 4 || shape[0] != 1 || shape[1] != index_->d) {
    throw std::runtime_error(bank_path_ + ": model output 0 has shape " + ShapeToString(shape) +
                             ", expected patch features (1, " + std::to_string(index_->d) + ", h, w)");
  }
}

std::vector<float> PatchScorer::Score(const float *features, const std::vector<int64_t> &shape) const {
  CheckFeatureShape(shape);
  const int64_t dim = shape[1];
  const int64_t locations = shape[2] * shape[3];
  // NCHW -> one row of D features per location, the layout faiss searches.
  std::vector<float> queries(static_cast<size_t>(locations * dim));
  for (int64_t c = 0; c < dim; ++c) {
    for (int64_t p = 0; p < locations; ++p) queries[p * dim + c] = features[c * locations + p];
  }
  std::vector<float> distances(static_cast<size_t>(locations * num_nn_));
  std::vector<int64_t> labels(distances.size());
  index_->search(locations, queries.data(), num_nn_, distances.data(), labels.data());
  // faiss finds the entries; their distances are computed again as sum((x - m)^2), one row at a time: faiss's
  // |x|^2 + |m|^2 - 2 x.m goes through a matrix product whose rounding depends on the batch (as in Python,
  // src/patchcore/memory_bank.py).
  std::vector<float> entry(static_cast<size_t>(dim));
  std::vector<float> scores(static_cast<size_t>(locations));
  for (int64_t p = 0; p < locations; ++p) {
    const float *query = queries.data() + p * dim;
    double sum = 0.0;
    for (int k = 0; k < num_nn_; ++k) {
      index_->reconstruct(labels[p * num_nn_ + k], entry.data());
      float distance = 0.0f;
      for (int64_t c = 0; c < dim; ++c) {
        const float difference = query[c] - entry[c];
        distance += difference * difference;
      }
      sum += distance;
    }
    scores[p] = static_cast<float>(sum / num_nn_);
  }
  return scores;
}

}  // namespace patchcore
