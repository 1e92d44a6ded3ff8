/**
 * patchcore_infer: run an exported PatchCore MindIR with the MindSpore Lite C++ API on preprocessed
 * float32 NCHW .npy inputs, optionally scoring the patch features against a faiss memory bank.
 * Every failure ends with one line on stderr and a non-zero exit code.
 */
#include <dlfcn.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <cctype>
#include <map>
#include <set>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "file_utils.h"
#include "include/api/context.h"
#include "include/api/model.h"
#include "include/api/status.h"
#include "include/api/types.h"
#include "npy.h"
#include "options.h"
#include "patch_scoring.h"

namespace patchcore {
namespace {

using Clock = std::chrono::steady_clock;

double MillisecondsSince(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

// NumPy dtype strings of the tensor types a model can output.
std::string NpyDescr(mindspore::DataType type) {
  static const std::map<mindspore::DataType, std::string> kDescr = {
    {mindspore::DataType::kNumberTypeFloat32, "<f4"}, {mindspore::DataType::kNumberTypeFloat16, "<f2"},
    {mindspore::DataType::kNumberTypeFloat64, "<f8"}, {mindspore::DataType::kNumberTypeInt8, "|i1"},
    {mindspore::DataType::kNumberTypeInt16, "<i2"},   {mindspore::DataType::kNumberTypeInt32, "<i4"},
    {mindspore::DataType::kNumberTypeInt64, "<i8"},   {mindspore::DataType::kNumberTypeUInt8, "|u1"},
    {mindspore::DataType::kNumberTypeBool, "|b1"}};
  auto it = kDescr.find(type);
  if (it == kDescr.end()) {
    throw std::runtime_error("model output has unsupported data type " + std::to_string(static_cast<int>(type)));
  }
  return it->second;
}

std::string JsonString(const std::string &text) {
  std::ostringstream out;
  out << '"';
  for (unsigned char c : text) {
    if (c == '"' || c == '\\') {
      out << '\\' << c;
    } else if (c < 0x20) {
      out << "\\u" << std::hex << std::setw(4) << std::setfill('0') << static_cast<int>(c) << std::dec;
    } else {
      out << c;
    }
  }
  out << '"';
  return out.str();
}

// The kernel of the OpenBLAS faiss scores with, as OpenBLAS names it ("none" when no OpenBLAS is loaded).
std::string OpenBlasCore() {
  using CoreName = char *(*)();
  auto core_name = reinterpret_cast<CoreName>(dlsym(RTLD_DEFAULT, "openblas_get_corename"));
  return core_name == nullptr ? "none" : core_name();
}

// OPENBLAS_CORETYPE to set when OpenBLAS fell back to a generic kernel on a CPU with AVX2 or AVX-512 (a CPU
// newer than the OpenBLAS build: ~5x slower scoring), else nullptr. A value the user set is never changed.
const char *BetterOpenBlasCore() {
  static const std::set<std::string> kGeneric = {"prescott", "nehalem", "core2", "penryn", "dunnington", "atom",
                                                 "katmai", "coppermine", "northwood", "banias", "generic",
                                                 "sandybridge", "barcelona"};
  if (getenv("OPENBLAS_CORETYPE") != nullptr) return nullptr;
  std::string core = OpenBlasCore();
  for (auto &c : core) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (kGeneric.count(core) == 0) return nullptr;
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")) {
    return "SkylakeX";
  }
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? "Haswell" : nullptr;
}

// The Ascend plugin of the Lite runtime needs the CANN runtime library; without it Build fails with an
// unhelpful status, so say what is missing up front.
void RequireAscendRuntime() {
  void *handle = dlopen("libascendcl.so", RTLD_LAZY | RTLD_LOCAL);
  if (handle == nullptr) {
    throw std::runtime_error(
      "--device_type Ascend: the Ascend runtime (libascendcl.so from the CANN toolkit) is not available on this "
      "machine; this MindSpore Lite runtime can only run --device_type CPU here");
  }
  dlclose(handle);
}

std::shared_ptr<mindspore::Context> MakeContext(const Options &options) {
  auto context = std::make_shared<mindspore::Context>();
  context->SetThreadNum(options.threads);
  auto &devices = context->MutableDeviceInfo();
  if (options.device_type == "Ascend") {
    RequireAscendRuntime();
    auto ascend = std::make_shared<mindspore::AscendDeviceInfo>();
    ascend->SetDeviceID(static_cast<uint32_t>(options.device_id));
    devices.push_back(ascend);
  } else {
    devices.push_back(std::make_shared<mindspore::CPUDeviceInfo>());
  }
  return context;
}

// Every input must be exactly the model's input: float32, NCHW, same shape.
void CheckInputMatchesModel(const std::string &path, const NpyHeader &header, const mindspore::MSTensor &input) {
  if (header.descr != "<f4") {
    throw std::runtime_error(path + ": dtype '" + header.descr + "' but the model expects float32 ('<f4')");
  }
  if (header.shape != input.Shape()) {
    throw std::runtime_error(path + ": shape " + ShapeToString(header.shape) + " but the model expects float32 NCHW " +
                             ShapeToString(input.Shape()));
  }
}

int Run(const Options &options) {
  // Check the inputs and the bank before spending seconds on the model.
  const auto input_files = ListNpyInputs(options.input_path);
  std::vector<NpyHeader> headers;
  for (const auto &path : input_files) headers.push_back(ReadNpyHeader(path));
  std::unique_ptr<PatchScorer> scorer;
  if (!options.bank_path.empty()) {
    scorer = std::make_unique<PatchScorer>(options.bank_path, options.num_nn, options.threads);
  }
  if (!std::ifstream(options.mindir_path, std::ios::binary)) {
    throw std::runtime_error(options.mindir_path + ": cannot open model file");
  }

  auto context = MakeContext(options);
  mindspore::Model model;
  const auto load_start = Clock::now();
  auto status = model.Build(options.mindir_path, mindspore::ModelType::kMindIR, context);
  const double load_ms = MillisecondsSince(load_start);
  if (status != mindspore::kSuccess) {
    throw std::runtime_error(options.mindir_path + ": MindSpore Lite cannot build the model on " +
                             options.device_type + " (" + status.ToString() + ")");
  }
  auto inputs = model.GetInputs();
  if (inputs.size() != 1) {
    throw std::runtime_error(options.mindir_path + ": model has " + std::to_string(inputs.size()) +
                             " inputs; this runner feeds exactly one");
  }
  if (inputs[0].DataType() != mindspore::DataType::kNumberTypeFloat32) {
    throw std::runtime_error(options.mindir_path + ": model input is not float32");
  }
  for (size_t i = 0; i < input_files.size(); ++i) CheckInputMatchesModel(input_files[i], headers[i], inputs[0]);
  if (scorer) {
    const auto outputs = model.GetOutputs();
    if (outputs.empty() || outputs[0].DataType() != mindspore::DataType::kNumberTypeFloat32) {
      throw std::runtime_error(options.mindir_path + ": output 0 is not float32 patch features for --bank_path");
    }
    scorer->CheckFeatureShape(outputs[0].Shape());
  }

  MakeDirs(options.result_path);
  std::ostringstream per_input;
  double total_predict_ms = 0.0;
  for (size_t i = 0; i < input_files.size(); ++i) {
    const auto &path = input_files[i];
    const auto stem = FileStem(path);
    ReadNpyData(path, headers[i], inputs[0].MutableData(), inputs[0].DataSize());

    std::vector<mindspore::MSTensor> outputs;
    const auto predict_start = Clock::now();
    status = model.Predict(inputs, &outputs);
    const double predict_ms = MillisecondsSince(predict_start);
    if (status != mindspore::kSuccess) {
      throw std::runtime_error(path + ": inference failed (" + status.ToString() + ")");
    }
    total_predict_ms += predict_ms;

    for (size_t k = 0; options.save_features && k < outputs.size(); ++k) {
      const auto &output = outputs[k];
      WriteNpy(options.result_path + "/" + stem + "_" + std::to_string(k) + ".npy", NpyDescr(output.DataType()),
               output.Shape(), output.Data().get(), output.DataSize());
    }
    per_input << (i ? ",\n" : "") << "    {\"input\": " << JsonString(stem) << ", \"predict_ms\": " << predict_ms;
    if (scorer) {
      const auto score_start = Clock::now();
      const auto scores =
        scorer->Score(static_cast<const float *>(outputs[0].Data().get()), outputs[0].Shape());
      const double score_ms = MillisecondsSince(score_start);
      const auto &shape = outputs[0].Shape();
      WriteNpy(options.result_path + "/" + stem + "_scores.npy", "<f4", {shape[2], shape[3]}, scores.data(),
               scores.size() * sizeof(float));
      per_input << ", \"score_ms\": " << score_ms;
    }
    per_input << "}";
  }

  std::ostringstream json;
  json << std::setprecision(6) << "{\n  \"device_type\": " << JsonString(options.device_type)
       << ",\n  \"threads\": " << options.threads << ",\n  \"openblas_core\": " << JsonString(OpenBlasCore())
       << ",\n  \"model_load_ms\": " << load_ms
       << ",\n  \"mean_predict_ms\": " << total_predict_ms / input_files.size() << ",\n  \"per_input\": [\n"
       << per_input.str() << "\n  ]\n}\n";
  WriteFileAtomic(options.result_path + "/latency.json", json.str());
  std::cout << "wrote " << input_files.size() << " result(s) to " << options.result_path << " (model load "
            << static_cast<int>(load_ms) << " ms, mean predict " << total_predict_ms / input_files.size()
            << " ms; OpenBLAS kernel " << OpenBlasCore() << ")" << std::endl;
  return 0;
}

}  // namespace
}  // namespace patchcore

int main(int argc, char **argv) {
  // Three settings are read when the libraries load, before main runs: MindSpore Lite's log level
  // (by default every run prints a harmless libnuma warning), OpenMP's wait policy (spinning
  // OpenMP threads compete with Lite's idle thread pool for the cores; passive made faiss scoring
  // ~1.8x faster on 2 cores) and OpenBLAS's kernel (where it fell back to a generic one, see
  // BetterOpenBlasCore). Re-run once with these defaults unless the user set them; if exec
  // fails, carry on as is.
  bool defaults_added = false;
  if (const char *core = patchcore::BetterOpenBlasCore()) {
    setenv("OPENBLAS_CORETYPE", core, 1);
    defaults_added = true;
  }
  for (const auto &[name, value] : {std::pair{"GLOG_v", "3"}, std::pair{"OMP_WAIT_POLICY", "passive"}}) {
    if (getenv(name) == nullptr) {
      setenv(name, value, 1);
      defaults_added = true;
    }
  }
  if (defaults_added) execv("/proc/self/exe", argv);
  patchcore::Options options;
  try {
    bool help = false;
    options = patchcore::ParseOptions(argc, argv, &help);
    if (help) {
      std::cout << patchcore::Usage();
      return 0;
    }
  } catch (const std::invalid_argument &error) {
    std::cerr << "patchcore_infer: error: " << error.what() << " (see --help)" << std::endl;
    return 2;
  }
  try {
    return patchcore::Run(options);
  } catch (const std::exception &error) {
    std::cerr << "patchcore_infer: error: " << error.what() << std::endl;
    return 1;
  }
}
