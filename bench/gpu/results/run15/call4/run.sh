#!/usr/bin/env bash
# Run 15, call 4: the backend_ops test binary of the final branch on the card, whole (one
# process), then the two tests that failed in call 3 in their own processes.
set -u
for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
if ! ls /usr/share/vulkan/icd.d/*nvidia* /etc/vulkan/icd.d/*nvidia* >/dev/null 2>&1; then
    export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
fi
export WGPU_BACKEND=vulkan
D=./.bin/h-gpu6
nvidia-smi --query-gpu=name,driver_version --format=csv | tee $OUT/card.txt
timeout 200 $D/backend_ops --test-threads=1 --nocapture 2>&1 | grep -v XDG_RUNTIME >$OUT/tests.txt
echo "whole binary rc=${PIPESTATUS[0]}" | tee -a $OUT/tests.txt
for t in products_of_one_input_share_a_dispatch residual_add_folds_into_the_norm; do
    timeout 60 $D/backend_ops --exact "$t" 2>&1 | grep -v XDG_RUNTIME >>$OUT/tests.txt
    echo "$t alone rc=${PIPESTATUS[0]}" | tee -a $OUT/tests.txt
done
grep -E "^test |panicked|test result" $OUT/tests.txt
