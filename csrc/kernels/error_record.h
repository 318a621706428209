// error_record.h — why a launch gave up, as the host reads it: the reasons and the special counter
// index of a weight page's wait. Plain C++ shared by the device code (sync.cuh's ErrorRecord), the
// C++ runtime (csrc/runtime/session.cpp) and the Python runtime, which reads the enumerators from
// this file (adamk/runtime/decode.py ERROR), so the three cannot disagree.
#pragma once

namespace adamk {

// kWaitTimeout: a counter (or a weight page's) wait ran past the timeout; kSmemOverflow: a task
// needed more dynamic shared memory than the launch gave (expected: bytes needed, observed: given);
// kPollTimeout: a tagged word stayed stale (the record holds its address); kBadToken: a whole
// model's token id outside its vocabulary (expected: the vocabulary size, observed: the id);
// kBadPosition: its position outside the KV cache (expected: max_seq_len); kEpochsExhausted: a
// launch past the last epoch (expected: that epoch, observed: the launch's).
enum ErrorReason : unsigned {
  kWaitTimeout = 0,
  kSmemOverflow = 1,
  kPollTimeout = 2,
  kBadToken = 3,
  kBadPosition = 4,
  kEpochsExhausted = 5,
};

constexpr unsigned kRingCounter = 0xffffffffu;   // ErrorRecord.counter of a timed-out weight-page wait
constexpr int kErrorRecordWords = 16;            // 32-bit words the host allocates for the record

}  // namespace adamk
