// decode.cpp — the C++ runtime end to end: load a whole-model artifact, bind its weights from a
// safetensors checkpoint, decode N tokens on the GPU with no host work between steps, print them.
//
//   adamk-decode ARTIFACT_DIR WEIGHTS(.safetensors | checkpoint dir) [--token T] [--pos P] [--steps N] [--device D]
//
// The KV caches start empty, so this decodes from token T at position P (default 0) as if
// nothing came before it (a serving engine prefills the caches first: adamk/runtime/engine.py).
// An artifact compiled for a batch decodes its every sequence so, one line of tokens each.
// One `error:` line and exit 1 on any problem.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "session.hpp"
#include "weights.hpp"

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: adamk-decode ARTIFACT_DIR WEIGHTS [--token T] [--pos P] [--steps N] [--device D]\n");
    return 2;
  }
  int token = 0, pos = 0, steps = 16, device = 0;
  for (int i = 3; i < argc; i += 2) {
    int* into = !std::strcmp(argv[i], "--token") ? &token : !std::strcmp(argv[i], "--pos") ? &pos
              : !std::strcmp(argv[i], "--steps") ? &steps : !std::strcmp(argv[i], "--device") ? &device : nullptr;
    if (!into) {
      std::fprintf(stderr, "error: unknown option %s\n", argv[i]);
      return 2;
    }
    char* end = nullptr;
    const long value = i + 1 < argc ? std::strtol(argv[i + 1], &end, 10) : -1;
    if (i + 1 >= argc || *end != '\0' || value < 0 || value > 1 << 30 || (into == &steps && value < 1)) {
      std::fprintf(stderr, "error: %s needs a %s number\n", argv[i], into == &steps ? "positive" : "non-negative");
      return 2;
    }
    *into = int(value);
  }
  try {
    adamk::Artifact artifact = adamk::Artifact::open(argv[1]);
    if (!artifact.whole_model()) throw adamk::Error("this artifact is one decoder layer; adamk-decode runs a whole model");
    adamk::Session session(std::move(artifact), device);
    if (pos + steps > session.max_seq_len())
      throw adamk::Error(std::to_string(steps) + " steps from position " + std::to_string(pos) + " pass the KV cache's " +
                         std::to_string(session.max_seq_len()) + " positions (the artifact's max_seq_len)");
    adamk::upload_weights(session, adamk::Checkpoint::open(argv[2]));
    const int batch = session.batch();
    session.start(std::vector<int>(size_t(batch), token), std::vector<int>(size_t(batch), pos), nullptr);
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < steps; ++i) session.launch(0, nullptr);     // back to back: tokens and positions on the device
    session.check();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const uint64_t row = uint64_t(session.describe("tokens").elements() / batch);   // a sequence's ids
    std::vector<int32_t> tokens(static_cast<size_t>(steps));
    for (int b = 0; b < batch; ++b) {
      session.read("tokens", tokens.data(), 4 * (uint64_t(b) * row + uint64_t(pos) + 1), 4 * uint64_t(steps));
      if (batch > 1) std::printf("sequence %d ", b);
      std::printf("tokens:");
      for (int32_t t : tokens) std::printf(" %d", t);
      std::printf("\n");
    }
    std::printf("%d steps in %.3f ms (%.1f tokens/s, %s)\n", steps, s * 1e3, double(batch) * steps / s,
                session.loaded_from().c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
