#!/bin/sh
# Shows what the device plugin granted this container: the block and
# character devices in /dev beyond the runtime's defaults, and one 4 KiB block
# read from each granted block device.
#   show-devices.sh            show once and exit
#   show-devices.sh --wait     show, then keep running (for a Deployment)
dev_dir="${DEV_DIR:-/dev}"

echo "running as: $(id)"
echo "devices in ${dev_dir}:"
ls -l "${dev_dir}"

found=0
for node in "${dev_dir}"/* "${dev_dir}"/mapper/* "${dev_dir}"/crypto/*; do
  [ -b "${node}" ] || [ -c "${node}" ] || continue
  case "$(basename "${node}")" in
    # Created by the container runtime in every container, granted or not.
    null | zero | full | random | urandom | tty | console | ptmx | fuse | net | kmsg) continue ;;
  esac
  found=$((found + 1))
  if [ -b "${node}" ]; then
    if dd if="${node}" of=/dev/null bs=4096 count=1 2>/dev/null; then
      echo "granted: ${node} (block device): read 4096 bytes"
    else
      echo "granted: ${node} (block device): read FAILED (permissions? see examples/README.md)"
    fi
  else
    echo "granted: ${node} (character device)"
  fi
done
echo "granted devices: ${found}"

if [ "${1:-}" = "--wait" ]; then
  # Stay up so the grant can be inspected with `oc exec`.
  while :; do sleep 3600; done
fi
