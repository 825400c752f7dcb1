// Whether this build runs under a sanitizer. Their runtimes map memory of their own
// (ASan's allocator regions, ThreadSanitizer's shadow of every newly touched range) and
// hold freed memory back (ASan's quarantine), so counts of mappings and resident memory
// mean something else there; the plain build checks those.
#pragma once

// clang says so with __has_feature, gcc with __SANITIZE_ADDRESS__ / __SANITIZE_THREAD__.
#if defined(__has_feature)
#define CAPNSPLICE_TESTING_HAS_FEATURE(name) __has_feature(name)
#else
#define CAPNSPLICE_TESTING_HAS_FEATURE(name) 0
#endif

namespace capnsplice::testing {

#if defined(__SANITIZE_THREAD__) || CAPNSPLICE_TESTING_HAS_FEATURE(thread_sanitizer)
inline constexpr bool kThreadSanitizer = true;
#else
inline constexpr bool kThreadSanitizer = false;
#endif

#if defined(__SANITIZE_ADDRESS__) || CAPNSPLICE_TESTING_HAS_FEATURE(address_sanitizer)
inline constexpr bool kAddressSanitizer = true;
#else
inline constexpr bool kAddressSanitizer = false;
#endif

inline constexpr bool kUnderSanitizer = kThreadSanitizer || kAddressSanitizer;

}  // namespace capnsplice::testing
