#include "options.h"

#include <map>
#include <stdexcept>
#include <string>

namespace patchcore {
namespace {

int ParsePositiveInt(const std::string &flag, const std::string &text, int minimum) {
  size_t used = 0;
  int value = 0;
  try {
    value = std::stoi(text, &used);
  } catch (const std::exception &) {
    used = 0;
  }
  if (used != text.size() || text.empty() || value < minimum) {
    throw std::invalid_argument("--" + flag + ": expected an integer >= " + std::to_string(minimum) + ", got '" +
                                text + "'");
  }
  return value;
}

}  // namespace

std::string Usage() {
  return "usage: patchcore_infer --mindir_path MODEL.mindir --input_path INPUT.npy|FOLDER --result_path FOLDER\n"
         "                       [--device_type CPU|Ascend] [--device_id N] [--threads N]\n"
         "                       [--bank_path faiss.index --num_nn K [--save_features 0|1]]\n"
         "Runs a MindIR model (MindSpore Lite) on float32 NCHW .npy inputs and writes <stem>_<k>.npy per output\n"
         "plus latency.json. With --bank_path, output 0 ([1, D, h, w] patch features) is scored against the faiss\n"
         "index: <stem>_scores.npy [h, w] = mean squared L2 distance to the num_nn nearest bank entries;\n"
         "--save_features 0 then skips the feature files (an edge box needs only the scores).\n";
}

Options ParseOptions(int argc, char **argv, bool *help) {
  std::map<std::string, std::string> values;
  *help = false;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      *help = true;
      return Options();
    }
    if (arg.rfind("--", 0) != 0) throw std::invalid_argument("unexpected argument '" + arg + "'");
    std::string name = arg.substr(2);
    std::string value;
    auto equals = name.find('=');
    if (equals != std::string::npos) {
      value = name.substr(equals + 1);
      name = name.substr(0, equals);
    } else {
      if (i + 1 >= argc) throw std::invalid_argument("--" + name + ": missing value");
      value = argv[++i];
    }
    values[name] = value;
  }

  Options options;
  const std::map<std::string, std::string *> text_flags = {
    {"mindir_path", &options.mindir_path}, {"input_path", &options.input_path},
    {"result_path", &options.result_path}, {"device_type", &options.device_type},
    {"bank_path", &options.bank_path}};
  const std::map<std::string, std::pair<int *, int>> int_flags = {
    {"device_id", {&options.device_id, 0}}, {"threads", {&options.threads, 1}}, {"num_nn", {&options.num_nn, 1}},
    {"save_features", {&options.save_features, 0}}};
  for (const auto &[name, value] : values) {
    if (auto text = text_flags.find(name); text != text_flags.end()) {
      *text->second = value;
    } else if (auto number = int_flags.find(name); number != int_flags.end()) {
      *number->second.first = ParsePositiveInt(name, value, number->second.second);
    } else {
      throw std::invalid_argument("unknown flag --" + name);
    }
  }
  for (const auto &[name, target] : text_flags) {
    if (name != "bank_path" && target->empty()) throw std::invalid_argument("--" + name + " is required");
  }
  if (options.device_type != "CPU" && options.device_type != "Ascend") {
    throw std::invalid_argument("--device_type: expected CPU or Ascend, got '" + options.device_type + "'");
  }
  if (values.count("num_nn") && options.bank_path.empty()) {
    throw std::invalid_argument("--num_nn needs --bank_path");
  }
  if (options.save_features > 1) {
    throw std::invalid_argument("--save_features: expected 0 or 1, got " + std::to_string(options.save_features));
  }
  if (!options.save_features && options.bank_path.empty()) {
    throw std::invalid_argument("--save_features 0 needs --bank_path (there would be no output)");
  }
  return options;
}

}  // namespace patchcore
