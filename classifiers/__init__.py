"""Classical classifiers on cached embeddings: the zoo, cross-validation reports, model files."""
from .bundle import Bundle, evaluate, load_bundle, predict, predict_imagenet, save_bundle, train
from .crossval import CVReport, cross_validate, make_splits
from .report import report_dict, write_report
from .zoo import (ClassifierSpec, list_classifiers, make_classifier, parse_spec, register_classifier,
                  unregister_classifier)

__all__ = ["Bundle", "CVReport", "ClassifierSpec", "cross_validate", "evaluate", "list_classifiers", "load_bundle",
           "make_classifier", "make_splits", "parse_spec", "predict", "predict_imagenet", "register_classifier",
           "report_dict", "save_bundle", "train", "unregister_classifier", "write_report"]
