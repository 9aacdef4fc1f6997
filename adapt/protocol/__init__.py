"""The research protocol as a graph of resumable, hash-keyed stages (`stages`); training-agnostic."""
from adapt.protocol.stages import (GRAPH_FILE, STAGE_FILE, Stage, StageContext, canonical_json,
                                   default_headline, expand_seeds, format_duration, read_stage, run_graph,
                                   seed_name, stage_key, stage_keys, stage_subdir)

__all__ = ['GRAPH_FILE', 'STAGE_FILE', 'Stage', 'StageContext', 'canonical_json', 'default_headline',
           'expand_seeds', 'format_duration', 'read_stage', 'run_graph', 'seed_name', 'stage_key', 'stage_keys',
           'stage_subdir']
