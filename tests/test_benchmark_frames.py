"""Per-frame costs of online translation (adapt.evaluation.efficiency: the benchmark's and the Day2Night
report's): the wrapped detector costs its translation plus its detection, and the fully convolutional
translator's FLOPs grow with the pixels of the frame."""
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
