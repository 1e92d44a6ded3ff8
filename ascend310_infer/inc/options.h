/** Command-line options of patchcore_infer. */
#ifndef PATCHCORE_INFER_OPTIONS_H_
#define PATCHCORE_INFER_OPTIONS_H_

#include <string>

namespace patchcore {

struct Options {
  std::string mindir_path;
  std::string input_path;   // one .npy file or a folder of them
  std::string result_path;  // output folder
  std::string device_type = "CPU";
  int device_id = 0;
  int threads = 2;
  std::string bank_path;  // optional faiss index: enables patch scoring of output 0
  int num_nn = 1;
  int save_features = 1;  // 0: with a bank, write only the patch scores (no feature files)
};

/** One-paragraph usage text. */
std::string Usage();

/**
 * Parse `--name value` or `--name=value` flags. Throws std::invalid_argument with a one-line
 * message for unknown flags, missing values, bad numbers or missing required flags.
 * Sets `*help` and returns early when --help is given.
 */
Options ParseOptions(int argc, char **argv, bool *help);

}  // namespace patchcore

#endif  // PATCHCORE_INFER_OPTIONS_H_
