# torch-images: login shells (bash -l, su -, job schedulers) start from /etc/profile's PATH, which
# drops /opt/venv/bin and the CUDA folders. Put the image's PATH first again, keeping any other entries.
# The work happens in a subshell, so IFS, globbing and variables of the login shell are left as they were.
if [ -r /etc/torch-images/path ]; then
    PATH=$(
        set -f
        IFS= read -r new < /etc/torch-images/path
        IFS=:
        for dir in ${PATH-}; do
            case ":$new:" in
                *":$dir:"*) ;;
                *) new="$new:$dir" ;;
            esac
        done
        printf '%s' "$new"
    )
    VIRTUAL_ENV=/opt/venv
    export PATH VIRTUAL_ENV
fi
