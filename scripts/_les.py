import sys; sys.path.insert(0, '../apps/liver_cascade')
from pathlib import Path
import numpy as np, nibabel as nib, torch
from scipy import ndimage as ndi
from monai.transforms import Compose, LoadImaged, EnsureChannelFirstd, Orientationd
from lib.evaluation.predict import make_task
R = Path('../../shared/real-ct/nifti')
for tag, mdir, vol in [('s1', '../apps/liver_cascade/model', 'hcc_0697_eqp'), ('s2', '../data-local/split2', 'hcc_2022_ap')]:
    task = make_task('liver_cascade', mdir)
    d = {'image': str(R / f'{vol}.nii.gz'), 'label_ref': str(R / f'{vol}_label.nii.gz'), 'crf': 'off', 'keep_probs': True}
    d = Compose(task.pre_transforms(d))(d)
    ref = Compose([LoadImaged('label_ref'), EnsureChannelFirstd('label_ref'), Orientationd('label_ref', 'RAS')])(d)['label_ref'][0].numpy()
    d = task.run_inferer(d, device='cpu')
    p = np.asarray(d['probs']).astype(np.float32); les = p[2]; liv = p[1] + p[2]
    t = ref == 2; td = ndi.binary_dilation(t, iterations=2)
    print(tag, 'tumour vox', t.sum(), 'lesion prob in tumour: max %.3f mean %.3f' % (les[t].max(), les[t].mean()), 'liver prob in tumour mean %.3f' % liv[t].mean())
    hu = d['image_hu'].numpy(); print(' tumour HU mean', hu[t].mean(), 'liver HU mean', hu[ref == 1].mean())
    inliv = ref == 1
    for th in [0.1, 0.2, 0.3, 0.5]:
        m = (les > th) & (ref > 0); lab, n = ndi.label(m)
        hit = len(set(np.unique(lab[t])) - {0})
        print('  th', th, 'components in ref liver', n, 'touching tumour', hit, 'vox', m.sum())
