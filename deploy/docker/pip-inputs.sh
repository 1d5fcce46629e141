# Sourced (POSIX sh) by every pip step of the Dockerfile: the build's optional package inputs, so that the
# build works behind a TLS-intercepting proxy, with a mirror, or offline. Nothing it touches is in a layer:
# the secret and wheels/ are mounts of the step, and /run/pip is a tmpfs that ends with it.
#   secret "ca"       PEM certificates trusted besides the image's own store (cat'ed into one bundle for pip)
#   wheels/           the build context's wheel folder, offered to pip before any index (PIP_FIND_LINKS)
#   PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, PIP_FIND_LINKS   build args: pip reads them; empty ones are dropped
if [ -s /run/secrets/ca ]; then
    if [ -s /etc/ssl/certs/ca-certificates.crt ]; then
        cat /etc/ssl/certs/ca-certificates.crt /run/secrets/ca > /run/pip/ca.pem
    else
        cat /run/secrets/ca > /run/pip/ca.pem
    fi
    export PIP_CERT=/run/pip/ca.pem
fi
[ -n "${PIP_INDEX_URL:-}" ] || unset PIP_INDEX_URL
[ -n "${PIP_EXTRA_INDEX_URL:-}" ] || unset PIP_EXTRA_INDEX_URL
export PIP_FIND_LINKS="/run/wheels${PIP_FIND_LINKS:+ $PIP_FIND_LINKS}"
