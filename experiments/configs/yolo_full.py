"""Full YOLO preset for a GPU/TPU: ssd_full's data and schedule, a full-width ResNet-18 with YOLOv3's three
levels (strides 8, 16, 32) and YOLOv3's COCO priors, bfloat16 compute.

    python -m experiments.train_detector --config=experiments/configs/yolo_full.py --workdir=/tmp/yolo_full

For priors from the data instead (k-means over train_day's boxes, 3 per level, as yolo_quick), set
`m.anchors = None` below.
"""
from experiments.configs import common

# YOLOv3's priors (Redmon and Farhadi 2018): (width, height) in pixels of its 416-px input, 3 per level from
# stride 8 to 32, here as fractions of the image.
YOLOV3_COCO_PRIORS = (((10, 13), (16, 30), (33, 23)), ((30, 61), (62, 45), (59, 119)),
                      ((116, 90), (156, 198), (373, 326)))


def get_config():
    c = common.full_config()
    c.detector = 'yolo'
    m = c.yolo.model
    m.backbone = 'resnet18'
    m.width = 1.0
    m.levels = ('C3', 'C4', 'C5')
    m.anchors = [[[w / 416, h / 416] for w, h in level] for level in YOLOV3_COCO_PRIORS]
    m.neck_channels = 256
    m.dtype = 'bfloat16'
    m.instance_top_k = 128
    return c
