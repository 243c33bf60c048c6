// How much memory this process may still take: the budget that memory guards
// (the neighbor search) compare against before allocating.
#pragma once

#include <unistd.h>

#include <cstddef>
#include <cstdio>
#include <cstring>

#include "settings.h"

namespace pygfm {

// MemAvailable of /proc/meminfo (the kernel's estimate, page cache included),
// else the free physical pages.
inline size_t system_available_bytes() {
  if (FILE* meminfo = std::fopen("/proc/meminfo", "r")) {
    char line[256];
    unsigned long long kib = 0;
    bool found = false;
    while (!found && std::fgets(line, sizeof line, meminfo))
      found = std::sscanf(line, "MemAvailable: %llu kB", &kib) == 1;
    std::fclose(meminfo);
    if (found) return static_cast<size_t>(kib) * 1024;
  }
  return static_cast<size_t>(sysconf(_SC_PAGE_SIZE)) * static_cast<size_t>(sysconf(_SC_AVPHYS_PAGES));
}

// The budget of a CPU neighbor search: the setting neighbor_memory_mb when set.
inline size_t neighbor_memory_budget() {
  const size_t limit = settings().neighbor_memory_bytes.load(std::memory_order_relaxed);
  return limit != 0 ? limit : system_available_bytes();
}

}  // namespace pygfm
