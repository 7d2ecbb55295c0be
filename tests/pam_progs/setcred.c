/* A PAM application that authenticates SERVICE/USER and establishes the
 * credentials, then prints the PAM user and its supplementary groups. */
#include <grp.h>
#include <security/pam_appl.h>
#include <stdio.h>
#include <unistd.h>

static int no_conv(int n, const struct pam_message **m, struct pam_response **r, void *d) {
    (void)n, (void)m, (void)r, (void)d;
    return PAM_CONV_ERR;
}

int main(int argc, char **argv) {
    struct pam_conv conv = {no_conv, NULL};
    pam_handle_t *h;
    if (argc != 3 || pam_start(argv[1], argv[2], &conv, &h) != PAM_SUCCESS)
        return 2;
    int r = pam_authenticate(h, 0);
    if (r == PAM_SUCCESS)
        r = pam_setcred(h, PAM_ESTABLISH_CRED);
    if (r != PAM_SUCCESS) {
        fprintf(stderr, "%s\n", pam_strerror(h, r));
        pam_end(h, r);
        return 1;
    }
    const void *user = NULL;
    pam_get_item(h, PAM_USER, &user);
    gid_t g[256];
    int n = getgroups(256, g);
    printf("%s", (const char *)user);
    for (int i = 0; i < n; i++)
        printf(" %u", (unsigned)g[i]);
    printf("\n");
    pam_setcred(h, PAM_DELETE_CRED);
    pam_end(h, PAM_SUCCESS);
    return 0;
}
