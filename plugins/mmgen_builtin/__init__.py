"""mmgen's built-in components, registered exactly as a third-party plugin registers its own.

Loaded through the ``mmgen`` entry-point group (name ``builtin``); disable with
``MMGEN_DISABLE_PLUGINS=builtin``.
"""

from __future__ import annotations

from mmgen.hookspecs import hookimpl

__version__ = "0.1.0"


@hookimpl
def register_datasets(register):
    from .datasets.default import DefaultDataConfig, default_dataset
    from .datasets.polymnist import PolyMNISTConfig, polymnist_dataset

    register("default", default_dataset, DefaultDataConfig,
             "Offline default: PolyMNIST-format tuples from scikit-learn's digits on procedural textures")
    register("polymnist", polymnist_dataset, PolyMNISTConfig, "PolyMNIST from disk (PNG folders or tensor files)")


@hookimpl
def register_encoders(register):
    from .networks.conv import ConvConfig, ConvEncoder
    from .networks.mlp import MLPConfig, MLPEncoder
    from .networks.resnet import ResNetConfig, ResNetEncoder

    register("conv", ConvEncoder, ConvConfig, "PolyMNIST conv encoder (3 strided convs + linear head)")
    register("mlp", MLPEncoder, MLPConfig, "Fully connected encoder for any modality shape")
    register("resnet", ResNetEncoder, ResNetConfig, "MMVAE+'s residual PolyMNIST encoder (Palumbo et al. 2023)")


@hookimpl
def register_decoders(register):
    from .networks.conv import ConvConfig, ConvDecoder
    from .networks.mlp import MLPConfig, MLPDecoder
    from .networks.resnet import ResNetConfig, ResNetDecoder

    register("conv", ConvDecoder, ConvConfig, "PolyMNIST conv decoder (linear + 3 transposed convs)")
    register("mlp", MLPDecoder, MLPConfig, "Fully connected decoder for any modality shape")
    register("resnet", ResNetDecoder, ResNetConfig, "MMVAE+'s residual PolyMNIST decoder (Palumbo et al. 2023)")


@hookimpl
def register_aggregators(register):
    from .aggregators.moe import MoE
    from .aggregators.mopoe import MoPoE, MoPoEConfig
    from .aggregators.poe import PoE, PoEConfig

    register("moe", MoE, None, "Mixture of experts (MMVAE), stratified over experts")
    register("poe", PoE, PoEConfig, "Product of Gaussian experts with the prior expert (MVAE)")
    register("mopoe", MoPoE, MoPoEConfig, "Mixture of products of experts over all subsets (MoPoE-VAE)")


@hookimpl
def register_priors(register):
    from .priors.gaussian import FixedPriorConfig, GaussianPrior
    from .priors.ebm import EBMConfig, EBMPrior
    from .priors.laplace import LaplacePrior

    register("gaussian", GaussianPrior, FixedPriorConfig, "Gaussian N(0, s^2 I), fixed or learned scale")
    register("laplace", LaplacePrior, FixedPriorConfig, "Laplace(0, s), fixed or learned scale")
    register("ebm", EBMPrior, EBMConfig, "Latent EBM prior exp(f(z)) N(0, s0^2 I), sampled by Langevin (Pang et al. 2020)")


@hookimpl
def register_inferences(register):
    from .inference.amortized import Amortized
    from .inference.langevin import LangevinInference, LangevinInferenceConfig

    register("amortized", Amortized, None, "The encoder's samples, unchanged")
    register("langevin", LangevinInference, LangevinInferenceConfig,
             "Short-run posterior Langevin from the amortized sample (Yuan et al. 2024)")


@hookimpl
def register_objectives(register):
    from .objectives.dreg import Dreg
    from .objectives.elbo import Elbo, ElboConfig
    from .objectives.iwae import Iwae, IwaeConfig
    from .objectives.mvae import Mvae, MvaeConfig

    register("elbo", Elbo, ElboConfig, "beta-ELBO, stratified over mixture components (MMVAE estimator)")
    register("iwae", Iwae, IwaeConfig,
             "Importance-weighted bound with K samples (Burda et al. 2016); looser: MMVAE's m_iwae_looser")
    register("dreg", Dreg, IwaeConfig,
             "IWAE with doubly reparameterised encoder gradients (Tucker et al. 2019); looser: m_dreg_looser")
    register("mvae", Mvae, MvaeConfig, "MVAE's sub-sampled ELBO: joint + unimodal + k random-subset terms")


@hookimpl
def register_metrics(register):
    from .metrics.coherence import CrossCoherence, JointCoherence
    from .metrics.fd import FDConfig, FrechetDistance
    from .metrics.fid import FIDConfig, InceptionFID
    from .metrics.nll import ImportanceSampledNLL, NLLConfig
    from .metrics.probe import LatentProbe, ProbeConfig

    register("cross_coherence", CrossCoherence, None,
             "Classifier accuracy of x_t generated from x_S, every subset S and target t (Shi et al. 2019)")
    register("joint_coherence", JointCoherence, None, "Fraction of unconditional samples all classifiers agree on")
    register("fd", FrechetDistance, FDConfig, "Frechet distance on mmgen's classifier features (not FID)")
    register("fid", InceptionFID, FIDConfig, "FID with Inception-v3 from a local weights file (skipped without one)")
    register("probe", LatentProbe, ProbeConfig, "Linear-probe accuracy of the label on the shared latent's posterior mean")
    register("nll", ImportanceSampledNLL, NLLConfig, "Test-set NLL estimated by importance sampling with K samples")


@hookimpl
def register_commands(cli):
    from .commands.data import data_app

    cli.add_typer(data_app, name="data")
