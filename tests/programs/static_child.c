/* static_child: statically linked, so none of its parent's libraries is mapped in it. */
#include <stdio.h>

int main(void)
{
    printf("static_child: ran\n");
    return 0;
}
