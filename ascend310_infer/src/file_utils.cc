#include "file_utils.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <system_error>

namespace fs = std::filesystem;

namespace patchcore {

std::vector<std::string> ListNpyInputs(const std::string &input_path) {
  std::error_code error;
  if (fs::is_regular_file(input_path, error)) return {input_path};
  if (!fs::is_directory(input_path, error)) {
    throw std::runtime_error(input_path + ": no such file or folder");
  }
  std::vector<std::string> files;
  for (const auto &entry : fs::directory_iterator(input_path)) {
    if (entry.is_regular_file() && entry.path().extension() == ".npy") files.push_back(entry.path().string());
  }
  if (files.empty()) throw std::runtime_error(input_path + ": folder holds no .npy file");
  std::sort(files.begin(), files.end());
  return files;
}

std::string FileStem(const std::string &path) { return fs::path(path).stem().string(); }

void MakeDirs(const std::string &folder) {
  std::error_code error;
  fs::create_directories(folder, error);
  if (error || !fs::is_directory(folder)) {
    throw std::runtime_error(folder + ": cannot create folder (" + error.message() + ")");
  }
}

void WriteFileAtomic(const std::string &path, const std::string &bytes) {
  const auto target = fs::path(path);
  const auto temp = target.parent_path() / ("." + target.filename().string() + "." + std::to_string(getpid()) + ".tmp");
  {
    std::ofstream out(temp, std::ios::binary | std::ios::trunc);
    if (!out.write(bytes.data(), static_cast<std::streamsize>(bytes.size())) || !out.flush()) {
      out.close();
      std::remove(temp.c_str());
      throw std::runtime_error(path + ": cannot write file");
    }
  }
  std::error_code error;
  fs::rename(temp, target, error);
  if (error) {
    std::remove(temp.c_str());
    throw std::runtime_error(path + ": cannot write file (" + error.message() + ")");
  }
}

}  // namespace patchcore
