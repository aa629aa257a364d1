"""A third party's own test: the plugin passes vqbench's quantizer contract."""
from vqbench.testing import check_quantizer
from vqbench_plugin_example import FactorizedVQ


def test_factorized_vq_conforms_as_a_class():
    check_quantizer(FactorizedVQ)


def test_factorized_vq_conforms_as_registered():
    check_quantizer("example-fvq", kwargs={"code_dim": 4})
