//! Exponential moving averages of weights (Ho et al. 2020 use 0.9999): a second copy of the
//! network, updated after every optimiser step with θ_ema ← d · θ_ema + (1 − d) · θ.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::Tensor;

struct Collect(Vec<Tensor<1>>);

impl ModuleVisitor for Collect {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let v = param.val().detach();
        let n = v.shape().num_elements();
        self.0.push(v.reshape([n]));
    }
}

struct Blend {
    src: std::vec::IntoIter<Tensor<1>>,
    decay: f64,
}

impl ModuleMapper for Blend {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let src = self.src.next().expect("the EMA copy has the online network's structure");
        let decay = self.decay;
        param.map(|e| {
            let dims = e.dims();
            (e.detach().mul_scalar(decay) + src.reshape(dims).mul_scalar(1.0 - decay)).detach()
        })
    }
}

/// θ_ema ← decay · θ_ema + (1 − decay) · θ_online for every float parameter (visited in the same
/// order, so both modules must come from the same configuration).
///
/// # Panics
/// If the two modules have different structures.
pub fn ema_update<M: Module>(ema: M, online: &M, decay: f64) -> M {
    assert!((0.0..=1.0).contains(&decay), "EMA decay {decay} must be in [0, 1]");
    let mut c = Collect(Vec::new());
    online.visit(&mut c);
    let n = c.0.len();
    let mut blend = Blend { src: c.0.into_iter(), decay };
    let out = ema.map(&mut blend);
    assert_eq!(blend.src.len(), 0, "the EMA copy has fewer parameters than the online network ({n})");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::{Linear, LinearConfig};
    use burn::tensor::Device;

    fn values(l: &Linear) -> Vec<f32> {
        l.weight.val().into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
    }

    #[test]
    fn ema_blends_every_parameter_with_the_decay() {
        let dev = Device::flex();
        let online = LinearConfig::new(3, 2).init(&dev);
        let ema = LinearConfig::new(3, 2).init(&dev);
        let (o, e) = (values(&online), values(&ema));
        let updated = ema_update(ema, &online, 0.9);
        for ((u, o), e) in values(&updated).iter().zip(&o).zip(&e) {
            assert!((u - (0.9 * e + 0.1 * o)).abs() < 1e-6);
        }
        // Decay 0 copies the online weights; decay 1 keeps the EMA.
        assert_eq!(values(&ema_update(updated.clone(), &online, 0.0)), o);
        assert_eq!(values(&ema_update(updated.clone(), &online, 1.0)), values(&updated));
        let ob =
            online.bias.as_ref().unwrap().val().into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
        let copy = ema_update(updated, &online, 0.0);
        assert_eq!(copy.bias.unwrap().val().into_data().convert::<f32>().try_to_vec::<f32>().unwrap(), ob);
    }
}
