// CRC-32C (Castagnoli), as the message log frames its records: the CPU's
// instruction where there is one (SSE4.2), else a table.
#include <cstdint>
#include <cstring>

#include "formica/internal/dms_placement.h"

namespace formica::dms {
namespace {

uint32_t Table(int i) {
  static const auto* table = [] {
    auto* t = new uint32_t[256];
    for (uint32_t n = 0; n < 256; ++n) {
      uint32_t c = n;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0x82F63B78u ^ (c >> 1) : c >> 1;
      t[n] = c;
    }
    return t;
  }();
  return table[i];
}

uint32_t Crc32cPortable(const unsigned char* p, size_t n, uint32_t crc) {
  for (size_t i = 0; i < n; ++i) crc = Table((crc ^ p[i]) & 0xff) ^ (crc >> 8);
  return crc;
}

#if defined(__x86_64__)
// The CPU's CRC32 instruction computes CRC-32C (SSE4.2): 8 bytes a step.
__attribute__((target("sse4.2"))) uint32_t Crc32cHardware(const unsigned char* p, size_t n,
                                                          uint32_t crc) {
  uint64_t c = crc;
  while (n >= 8) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    c = __builtin_ia32_crc32di(c, v);
    p += 8;
    n -= 8;
  }
  uint32_t c32 = static_cast<uint32_t>(c);
  while (n > 0) {
    c32 = __builtin_ia32_crc32qi(c32, *p++);
    --n;
  }
  return c32;
}
#endif

}  // namespace

uint32_t Crc32c(absl::string_view data, uint32_t crc) {
  const auto* p = reinterpret_cast<const unsigned char*>(data.data());
#if defined(__x86_64__)
  static const bool hardware = __builtin_cpu_supports("sse4.2");
  if (hardware) return ~Crc32cHardware(p, data.size(), ~crc);
#endif
  return ~Crc32cPortable(p, data.size(), ~crc);
}

}  // namespace formica::dms
