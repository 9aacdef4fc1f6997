"""Host-side (NumPy) detection evaluation: COCO (pycocotools-identical), VOC, and diagnostic curves."""
from adapt.evaluation.coco import SHORT_NAMES, CocoEvaluation, Params, evaluate_coco, summarize
from adapt.evaluation.cocojson import (CocoFormatError, Detections, GroundTruth, detections_to_results,
                                       ground_truth_from_arrays, load_detections, load_ground_truth,
                                       write_json)
from adapt.evaluation.curves import confusion_matrix, f1_curve, plot_precision_recall, precision_recall, tpr_fppi
from adapt.evaluation.voc import Matches, VocResult, average_precision, evaluate_voc, match_detections
from adapt.evaluation.transfer import (bootstrap_ci, bootstrap_interval, domain_gap, forgetting, gap_closed,
                                      proxy_a_distance, transfer_matrix_metrics)
