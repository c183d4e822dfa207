"""The REST calls 3D Slicer's MONAILabel module makes, replayed with monailabel's own client."""

import time

import numpy as np


def test_slicer_contract(tmp_path, server_factory):
    import phantom
    import SimpleITK as sitk
    from monailabel.client import MONAILabelClient

    studies = tmp_path / "studies"
    (studies / "labels" / "final").mkdir(parents=True)
    for i in range(3):
        p = phantom.generate_phantom(60 + i, shape_xy=(80, 80), spacing=(4.4, 4.4, 5.0), n_slices=9,
                                     orientation="LPS" if i else "permuted")
        p.save_nifti(str(studies / f"ct{i}.nii.gz"), str(studies / "labels" / "final" / f"ct{i}.nii.gz") if i < 2 else None)
    srv = server_factory(studies, {"models": "liver_resnet,liver_cascade"})
    client = MONAILabelClient(srv.url, tmpdir=str(tmp_path))

    info = client.info()  # Slicer fills its model and label lists from this
    assert {"liver_resnet", "liver_cascade"} <= set(info["models"])
    assert info["models"]["liver_cascade"]["labels"] == {"liver": 1, "lesion": 2}
    assert "uncertainty" in info["strategies"] and "liver_resnet" in info["trainers"]

    sample = client.next_sample("uncertainty", {})  # "Next Sample"
    assert sample["id"] == "ct2"

    # "Run" segmentation: Slicer asks for .nrrd, uint8
    result_file, params = client.infer("liver_cascade", "ct0", {"result_extension": ".nrrd", "result_dtype": "uint8",
                                                                "result_compress": False})
    assert result_file.endswith(".nrrd") and params["label_names"] == {"liver": 1, "lesion": 2}
    lab, ref = sitk.ReadImage(result_file), sitk.ReadImage(str(studies / "ct0.nii.gz"))
    assert lab.GetSize() == ref.GetSize()
    assert np.allclose(lab.GetDirection(), ref.GetDirection(), atol=1e-5)
    assert np.allclose(lab.GetOrigin(), ref.GetOrigin(), atol=1e-3)
    assert set(np.unique(sitk.GetArrayFromImage(lab))) <= {0, 1, 2}

    # "Submit Label": the (edited) segmentation with label_info
    label_info = [{"name": "liver", "idx": 1}, {"name": "lesion", "idx": 2}]
    res = client.save_label("ct2", _nrrd_for(studies, "ct2", tmp_path), tag="final",
                            params={"label_info": label_info})
    assert res["image"] == "ct2"
    ds = client.datastore()
    assert "final" in ds["objects"]["ct2"]["labels"]
    # the client's label download names the file from the answer's Content-Disposition
    downloaded = client.download_label("ct2", "final")
    ct2 = sitk.ReadImage(str(studies / "ct2.nii.gz"))
    assert downloaded.endswith(".nrrd") and sitk.ReadImage(downloaded).GetSize() == ct2.GetSize(), downloaded
    assert not client.next_sample("uncertainty", {}).get("id")  # nothing left to label

    # "Train": Slicer sends the trainer's whole config from /info (a list: the option chosen, here its
    # first), with the annotator's edits; start a (tiny) run and follow its status as Slicer does
    config = {k: v[0] if isinstance(v, list) else v for k, v in info["trainers"]["liver_resnet"]["config"].items()}
    client.train_start("liver_resnet", {**config, "max_epochs": 1, "samples_per_volume": 2, "train_batch_size": 4})
    t0 = time.time()
    status = client.train_status()
    while status.get("status") not in ("DONE", "ERROR") and time.time() - t0 < 600:
        time.sleep(2)
        status = client.train_status()
    assert status["status"] == "DONE", "\n".join(status.get("details", [])[-30:])


def _nrrd_for(studies, image, tmp_path):
    """A label as Slicer uploads it: .nrrd in the image's geometry."""
    import SimpleITK as sitk

    ref = sitk.ReadImage(str(studies / f"{image}.nii.gz"))
    arr = (sitk.GetArrayFromImage(ref) > 0).astype(np.uint8)
    lab = sitk.GetImageFromArray(arr)
    lab.CopyInformation(ref)
    path = str(tmp_path / f"{image}_label.nrrd")
    sitk.WriteImage(lab, path)
    return path
