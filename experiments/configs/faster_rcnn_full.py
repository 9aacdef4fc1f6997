"""Full Faster R-CNN preset for a GPU/TPU: torchvision's fasterrcnn_resnet50_fpn settings on ssd_full's data.

    python -m experiments.train_detector --config=experiments/configs/faster_rcnn_full.py --workdir=/tmp/frcnn_full

ResNet-50 + FPN (P2-P5, P6 by subsampling for the RPN), 3 ratios x one size per level, RPN 2000/1000 proposals
per level before NMS 0.7 (training/inference), 256 anchors at 0.5 positive (0.7/0.3 with low-quality matches),
512 RoIs at 0.25 positive (0.5), RoIAlign 7x7 with 2 samples per bin and without the half-pixel offset
(torchvision's; Detectron2's ROIAlignV2 sets `aligned`), two FC layers of 1024, smooth L1 with beta 1/9,
score 0.05, NMS 0.5, 100 detections. Two deviations:
  - 512 proposals after NMS in training (torchvision: 2000, then 512 sampled for the head): here the RoI head
    runs on every proposal row and the loss samples among them, so the training pass keeps what torchvision's
    head sees; 1000 at inference as torchvision.
  - explicit anchor sizes for these data: torchvision's (32 ... 512) are for 800-1333 px images; the 256 px
    daynight scenes upsampled to 512 px put the objects' sqrt(area) between ~12 and ~90 px (train_day's
    statistics scaled by 512/160), so the sizes are torchvision's halved.
Not run here (no accelerator in this project's CPU sessions): sizes and speed are unmeasured.
"""
from experiments.configs import common


def get_config():
    c = common.full_config()
    c.detector = 'faster_rcnn'
    c.image_size = 512
    c.batch_size = 16
    c.eval_batch_size = 32
    c.lr = 1e-3
    block = c.faster_rcnn
    block.model.update(dict(backbone='resnet50', width=1.0, levels=('C2', 'C3', 'C4', 'C5'), fpn_channels=256,
                            pool_level=True, anchor_sizes=(16.0, 32.0, 64.0, 128.0, 256.0), head_dim=1024,
                            instance_top_k=128, dtype='bfloat16'))
    block.rpn.update(dict(pre_nms_top_n=(2000, 1000), post_nms_top_n=(512, 1000), batch_size_per_image=256))
    block.roi.update(dict(sampling_ratio=2, aligned=False, batch_size_per_image=512))
    return c
