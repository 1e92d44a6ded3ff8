/** Small filesystem helpers: input listing, stems, atomic file output. */
#ifndef PATCHCORE_INFER_FILE_UTILS_H_
#define PATCHCORE_INFER_FILE_UTILS_H_

#include <string>
#include <vector>

namespace patchcore {

/**
 * The .npy files named by `input_path`: the file itself, or every *.npy directly inside the folder,
 * sorted by name. Throws std::runtime_error("<path>: ...") if it does not exist or holds no .npy file.
 */
std::vector<std::string> ListNpyInputs(const std::string &input_path);

/** File name without folder and extension: "/a/b/img_001.npy" -> "img_001". */
std::string FileStem(const std::string &path);

/** Create `folder` (and parents) if missing; throws std::runtime_error on failure. */
void MakeDirs(const std::string &folder);

/** Write `bytes` to `path` through a temporary file renamed on success. */
void WriteFileAtomic(const std::string &path, const std::string &bytes);

}  // namespace patchcore

#endif  // PATCHCORE_INFER_FILE_UTILS_H_
