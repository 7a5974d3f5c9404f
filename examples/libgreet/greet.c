#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "greet.h"

char *greet_hello(const char *name)
{
    const char *who = (name && *name) ? name : "world";
    size_t len = strlen("Hello, !") + strlen(who) + 1;
    char *out = malloc(len);
    if (!out)
        return NULL;
    snprintf(out, len, "Hello, %s!", who);
    return out;
}

const char *greet_version(void)
{
    return "1.0";
}
