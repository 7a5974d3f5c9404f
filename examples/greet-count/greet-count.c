#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <greet.h>

int main(int argc, char **argv)
{
    size_t total = 0;
    int n = argc > 1 ? argc - 1 : 1;
    for (int i = 0; i < n; i++) {
        char *s = greet_hello(argc > 1 ? argv[i + 1] : NULL);
        if (!s)
            return 1;
        printf("%zu\t%s\n", strlen(s), s);
        total += strlen(s);
        free(s);
    }
    printf("%zu\ttotal\n", total);
    return 0;
}
