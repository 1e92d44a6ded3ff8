/** Nearest-neighbour patch scoring against a faiss memory bank (PatchCore's anomaly map before upsampling). */
#ifndef PATCHCORE_INFER_PATCH_SCORING_H_
#define PATCHCORE_INFER_PATCH_SCORING_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace faiss {
struct Index;
}

namespace patchcore {

class PatchScorer {
 public:
  /**
   * Load the index with faiss::read_index and search with `threads` OpenMP threads;
   * throws std::runtime_error("<path>: ...") on failure.
   */
  PatchScorer(const std::string &bank_path, int num_nn, int threads);
  ~PatchScorer();

  /** Throw std::runtime_error("<bank path>: ...") unless `shape` is [1, D, h, w] with the bank's D. */
  void CheckFeatureShape(const std::vector<int64_t> &shape) const;

  /**
   * Score patch features of shape [1, D, h, w] (NCHW, float32): for every location the mean of the
   * squared L2 distances to its num_nn nearest bank entries, as faiss returns them. Output is [h, w].
   */
  std::vector<float> Score(const float *features, const std::vector<int64_t> &shape) const;

 private:
  std::string bank_path_;
  int num_nn_;
  std::unique_ptr<faiss::Index> index_;
};

}  // namespace patchcore

#endif  // PATCHCORE_INFER_PATCH_SCORING_H_
