#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <greet.h>

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--version") == 0) {
        printf("greet-cli 1.0 (libgreet %s)\n", greet_version());
        return 0;
    }
    int n = argc > 1 ? argc - 1 : 1;
    for (int i = 0; i < n; i++) {
        char *s = greet_hello(argc > 1 ? argv[i + 1] : NULL);
        if (!s)
            return 1;
        puts(s);
        free(s);
    }
    return 0;
}
