# torch-images: login shells (bash -l, su -, job schedulers) start from /etc/profile's PATH, which
# drops /opt/venv/bin and the CUDA folders. Put the image's PATH first again, keeping any other entries.
if [ -r /etc/torch-images/path ]; then
    _torch_images_path=$(cat /etc/torch-images/path)
    _torch_images_ifs=$IFS
    IFS=:
    for _torch_images_dir in $PATH; do
        case ":$_torch_images_path:" in
            *":$_torch_images_dir:"*) ;;
            *) _torch_images_path="$_torch_images_path:$_torch_images_dir" ;;
        esac
    done
    IFS=$_torch_images_ifs
    PATH=$_torch_images_path
    VIRTUAL_ENV=/opt/venv
    export PATH VIRTUAL_ENV
    unset _torch_images_path _torch_images_ifs _torch_images_dir
fi
