"""The benchmark's measurements in the library: per-frame costs of online translation
(adapt.evaluation.efficiency: the benchmark's and the Day2Night report's; the wrapped detector costs its
translation plus its detection, and the fully convolutional translator's FLOPs grow with the pixels of the
frame), frame-size parsing, and a trained run's post-processing against the plain path
(adapt.benchmark)."""
import ml_collections
import pytest

from adapt.evaluation.efficiency import frame_costs, parse_frame_sizes


def test_translated_frame_costs_split_into_translation_and_detection(source_run, unit_run):
    from adapt.runs import load_run
    config = load_run(source_run[0], 'detector').config
    config = ml_collections.ConfigDict({**config.to_dict(), 'detector': 'translated'})
    config.translated.update(dict(detector='ssd', transform='unit', unit_run=unit_run))
    rows = frame_costs(config, 3, [(32, 32), (64, 96)], steps=1, warmup=0)
    cost = {(r['size'], r['part']): r for r in rows}
    assert sorted(cost) == sorted((s, p) for s in ('32x32', '64x96') for p in ('detector', 'translation', 'detection'))
    for size in ('32x32', '64x96'):
        whole = cost[size, 'detector']['gflops']
        assert whole == pytest.approx(cost[size, 'translation']['gflops'] + cost[size, 'detection']['gflops'], rel=0.02)
        assert all(cost[size, p]['ms'] > 0 for p in ('detector', 'translation', 'detection'))
    # 6x the pixels: the translator (convolutions only, reflect padding aside) costs ~6x the FLOPs
    ratio = cost['64x96', 'translation']['gflops'] / cost['32x32', 'translation']['gflops']
    assert 5.0 < ratio < 7.0, ratio


def test_frame_sizes_parse_and_reject_malformed_sizes():
    assert parse_frame_sizes('train, 720x1280', (160, 160)) == [(160, 160), (720, 1280)]
    assert parse_frame_sizes('', (160, 160)) == []
    for bad in ('720by1280', '0x5', 'x', '720x'):
        with pytest.raises(ValueError, match='is not HEIGHTxWIDTH'):
            parse_frame_sizes(bad, (160, 160))


def test_trained_runs_post_processing_is_the_plain_paths_on_real_images(source_run):
    """adapt.benchmark.trained_run (the benchmark's --run): SSD's fast post-processing gives the
    plain path's detections (Detector.reference_postprocess) image for image, boxes bit for bit."""
    import tensorflow_datasets as tfds
    from adapt.benchmark import trained_run
    from adapt.runs import load_run
    run = load_run(source_run[0], 'detector')
    builder = tfds.builder(run.config.dataset, data_dir=run.data_dir)
    result = trained_run(run, builder, 'train_night', 4, steps=1, warmup=0)
    assert (result['images'], result['images_identical_to_reference'], result['max_box_difference']) == (4, 4, 0.0)
    assert result['detections'] > 0 and result['forward_ms_per_image'] > 0 and result['postprocess_ms_per_image'] > 0
