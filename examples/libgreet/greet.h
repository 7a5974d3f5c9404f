#ifndef GREET_H
#define GREET_H

#ifdef __cplusplus
extern "C" {
#endif

/* Returns a newly allocated string "Hello, <name>!" (name NULL -> "world").
 * The caller must free() it. Returns NULL on allocation failure. */
char *greet_hello(const char *name);

/* Returns the library version string, e.g. "1.0". */
const char *greet_version(void);

#ifdef __cplusplus
}
#endif

#endif /* GREET_H */
