//! Confusable class subsets from a generalist's predictions, without labels.
//!
//! Classes the generalist confuses rise and fall together in its predicted
//! probabilities, so their columns of the class covariance matrix are alike.
//! K-means on those columns (k-means++ seeding, seeded) groups them.

use burn::config::Config;
use burn::tensor::{Int, Tensor, TensorData};

use super::ClassSubset;
use super::rng::SplitMix64;
use crate::check::check_non_empty;
use crate::error::DistillError;

/// Covariance `[C, C]` of the classes' predicted probabilities over `N` examples
/// (`probs`: `[N, C]`, `N ≥ 2`), with the unbiased `1/(N − 1)` normalisation.
///
/// ```
/// use burn::tensor::{Device, Tensor};
/// use burn_distill::specialist::class_covariance;
///
/// let device = Device::flex();
/// let probs = Tensor::<2>::from_floats([[0.9, 0.1], [0.1, 0.9]], &device);
/// let cov = class_covariance(probs)?.into_data().to_vec::<f32>().unwrap();
/// assert!((cov[0] - 0.32).abs() < 1e-6 && (cov[1] + 0.32).abs() < 1e-6);
/// # Ok::<(), burn_distill::DistillError>(())
/// ```
pub fn class_covariance(probs: Tensor<2>) -> Result<Tensor<2>, DistillError> {
    let [n, _] = probs.dims();
    check_non_empty("probs", &probs.dims())?;
    if n < 2 {
        return Err(DistillError::InvalidParameter {
            argument: "probs rows",
            value: n,
            requirement: "at least 2 to estimate a covariance",
        });
    }
    // Sum / n, not `mean_dim` (wrong on wgpu past 65,535 rows; see
    // `reduction::reduce`).
    let centred = probs.clone() - probs.clone().sum_dim(0).mul_scalar(1.0 / n as f64);
    Ok(centred
        .clone()
        .transpose()
        .matmul(centred)
        .div_scalar((n - 1) as f64))
}

/// How to find confusable class subsets; run with [`find`](Self::find).
///
/// ```
/// use burn::tensor::{Device, Tensor};
/// use burn_distill::specialist::ConfusableSubsetsConfig;
///
/// let device = Device::flex();
/// // Classes {0, 1} are confused with each other, as are {2, 3}.
/// let probs = Tensor::<2>::from_floats(
///     [[0.6, 0.4, 0.0, 0.0], [0.3, 0.7, 0.0, 0.0], [0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.8, 0.2]],
///     &device,
/// );
/// let subsets = ConfusableSubsetsConfig::new(2).find(probs)?;
/// let mut groups: Vec<Vec<usize>> = subsets.iter().map(|s| s.classes().to_vec()).collect();
/// groups.sort();
/// assert_eq!(groups, vec![vec![0, 1], vec![2, 3]]);
/// # Ok::<(), burn_distill::DistillError>(())
/// ```
#[derive(Config, Debug)]
pub struct ConfusableSubsetsConfig {
    /// Number of subsets (clusters) `K`, at least 1 and at most the number of classes.
    pub num_subsets: usize,
    /// Seed of the k-means++ seeding. Default: 0.
    #[config(default = 0)]
    pub seed: u64,
    /// Cap on Lloyd iterations. Default: 100.
    #[config(default = 100)]
    pub max_iterations: usize,
    /// Scale each covariance column to unit length before clustering, so that
    /// classes are grouped by the pattern of what they co-vary with rather than
    /// by how much they vary: a class the generalist rarely predicts has a tiny
    /// column, which otherwise sits near every centre. Default: true.
    #[config(default = true)]
    pub normalize_columns: bool,
    /// Independent k-means++ starts (seeds derived from `seed`); the clustering
    /// with the lowest within-cluster sum of squares is kept. Default: 10.
    #[config(default = 10)]
    pub restarts: usize,
    /// `None` (default): disjoint subsets, one per non-empty cluster. `Some(s)`:
    /// overlapping subsets of at most `s` classes, one per cluster (the paper's
    /// JFT specialists overlapped): the cluster's own classes, nearest its
    /// centre first, then other classes chosen by [`overlap`](Self::overlap);
    /// clusters that grow into the same subset give it once.
    #[config(default = "None")]
    pub subset_size: Option<usize>,
    /// Which other classes fill an overlapping subset (with `subset_size`
    /// only). Default: [`SubsetOverlap::Correlated`].
    #[config(default = "SubsetOverlap::Correlated")]
    pub overlap: SubsetOverlap,
}

/// How [`ConfusableSubsetsConfig`] grows a cluster into an overlapping subset.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum SubsetOverlap {
    /// The classes the generalist confuses with the cluster: those whose
    /// predicted probability is positively correlated with the cluster's total
    /// predicted probability, most correlated first, up to `subset_size`. A
    /// class correlated with no other cluster joins no other subset, so a
    /// subset may stay smaller than `subset_size`.
    Correlated,
    /// The classes nearest the cluster's centre, until every subset has
    /// exactly `subset_size` classes. Beware: a class the generalist confuses
    /// with nothing has a covariance column almost orthogonal to every centre,
    /// so it is "near" all of them and pads every subset; its specialists
    /// never see its real rivals, and eq. 5 gives all of them, together, more
    /// weight than the generalist on it.
    Nearest,
}

impl ConfusableSubsetsConfig {
    /// Clusters the columns of `class_covariance(probs)`; `probs` is `[N, C]`.
    ///
    /// # Errors
    /// On invalid parameters.
    pub fn find(&self, probs: Tensor<2>) -> Result<Vec<ClassSubset>, DistillError> {
        let [_, classes] = probs.dims();
        if self.num_subsets == 0 || self.num_subsets > classes {
            return Err(DistillError::InvalidParameter {
                argument: "num_subsets",
                value: self.num_subsets,
                requirement: "between 1 and the number of classes",
            });
        }
        if let Some(size) = self.subset_size
            && (size == 0 || size > classes)
        {
            return Err(DistillError::InvalidParameter {
                argument: "subset_size",
                value: size,
                requirement: "between 1 and the number of classes",
            });
        }
        if self.restarts == 0 {
            return Err(DistillError::InvalidParameter {
                argument: "restarts",
                value: 0,
                requirement: "at least 1",
            });
        }
        let covariance = class_covariance(probs)?;
        let points = if self.normalize_columns {
            // The covariance is symmetric: its rows are its columns.
            let norms = covariance
                .clone()
                .square()
                .sum_dim(1)
                .sqrt()
                .clamp_min(1e-30);
            covariance.clone() / norms
        } else {
            covariance.clone()
        };
        let mut rng = SplitMix64::new(self.seed);
        let (centres, assignment, _) = (0..self.restarts)
            .map(|_| {
                kmeans(
                    points.clone(),
                    self.num_subsets,
                    rng.next_u64(),
                    self.max_iterations,
                )
            })
            .min_by(|a, b| a.2.total_cmp(&b.2))
            .expect("at least one restart");
        match self.subset_size {
            None => {
                let mut groups = vec![Vec::new(); self.num_subsets];
                for (class, &k) in assignment.iter().enumerate() {
                    groups[k].push(class);
                }
                groups
                    .into_iter()
                    .filter(|g| !g.is_empty())
                    .map(|g| ClassSubset::new(g, classes))
                    .collect()
            }
            Some(size) => {
                // Each cluster's own classes first (nearest to its centre first),
                // then the others: by correlation with the cluster, or by distance.
                let k_total = self.num_subsets;
                let distances: Vec<f64> = squared_distances(points, centres) // [C, K]
                    .into_data()
                    .iter::<f64>()
                    .collect();
                // How strongly each class belongs with each cluster, higher first;
                // with `Correlated` only a positive affinity admits a class.
                let affinity: Vec<f64> = match self.overlap {
                    SubsetOverlap::Correlated => {
                        cluster_correlation(covariance.clone(), &assignment, k_total)
                    }
                    SubsetOverlap::Nearest => distances.iter().map(|d| -d).collect(),
                };
                let admits = |a: f64| self.overlap == SubsetOverlap::Nearest || a > 0.0;
                (0..k_total)
                    .map(|k| {
                        let at = |c: usize| c * k_total + k;
                        let mut own: Vec<usize> =
                            (0..classes).filter(|&c| assignment[c] == k).collect();
                        own.sort_by(|&a, &b| {
                            distances[at(a)]
                                .total_cmp(&distances[at(b)])
                                .then(a.cmp(&b))
                        });
                        let mut others: Vec<usize> = (0..classes)
                            .filter(|&c| assignment[c] != k && admits(affinity[at(c)]))
                            .collect();
                        others.sort_by(|&a, &b| {
                            affinity[at(b)].total_cmp(&affinity[at(a)]).then(a.cmp(&b))
                        });
                        own.extend(others);
                        own.truncate(size);
                        own
                    })
                    .filter(|subset| !subset.is_empty())
                    .map(|subset| ClassSubset::new(subset, classes))
                    .try_fold(Vec::new(), |mut distinct: Vec<ClassSubset>, subset| {
                        // Parts of one split group grow back into the same
                        // subset: one specialist for it.
                        let subset = subset?;
                        if !distinct.contains(&subset) {
                            distinct.push(subset);
                        }
                        Ok(distinct)
                    })
            }
        }
    }
}

/// `corr(p_i, Σ_{j ∈ cluster k} p_j)` for every class `i` and cluster `k`, as a
/// row-major `[C, K]` host vector, from the class covariance `[C, C]`. 0 where
/// either side never varies.
fn cluster_correlation(covariance: Tensor<2>, assignment: &[usize], k: usize) -> Vec<f64> {
    let [classes, _] = covariance.dims();
    let device = covariance.device();
    let membership = one_hot(assignment, k, &covariance); // [C, K]
    let with_cluster = covariance.clone().matmul(membership.clone()); // cov(p_i, p_S), [C, K]
    let cluster_variance = (membership.clone() * with_cluster.clone()).sum_dim(0); // [1, K]
    let class_variance =
        (covariance * Tensor::<2>::eye(classes, &device).cast(membership.dtype())).sum_dim(1); // [C, 1]
    let scale = (class_variance * cluster_variance).sqrt();
    let host = |t: Tensor<2>| -> Vec<f64> { t.into_data().iter::<f64>().collect() };
    host(with_cluster)
        .into_iter()
        .zip(host(scale))
        .map(|(c, s)| if s > 0.0 { c / s } else { 0.0 })
        .collect()
}

/// `‖x_i − c_k‖²` for points `[N, D]` and centres `[K, D]`, as `[N, K]`.
fn squared_distances(points: Tensor<2>, centres: Tensor<2>) -> Tensor<2> {
    let point_norms = points.clone().square().sum_dim(1); // [N, 1]
    let centre_norms = centres.clone().square().sum_dim(1).transpose(); // [1, K]
    let cross = points.matmul(centres.transpose()); // [N, K]
    (point_norms - cross.mul_scalar(2.0) + centre_norms).clamp_min(0.0)
}

/// K-means with k-means++ seeding; returns the centres `[K, D]`, each point's
/// cluster and the within-cluster sum of squared distances. Distances and centre
/// updates are burn tensor ops; only the seeding's sampling and the convergence
/// check read values back.
fn kmeans(
    points: Tensor<2>,
    k: usize,
    seed: u64,
    max_iterations: usize,
) -> (Tensor<2>, Vec<usize>, f64) {
    let [n, _] = points.dims();
    let mut rng = SplitMix64::new(seed);

    // k-means++: each next centre drawn with probability ∝ squared distance to the nearest chosen one.
    let mut chosen = vec![rng.below(n)];
    while chosen.len() < k {
        let centres = select_rows(&points, &chosen);
        let nearest: Vec<f64> = squared_distances(points.clone(), centres)
            .min_dim(1)
            .into_data()
            .iter::<f64>()
            .collect();
        let total: f64 = nearest.iter().sum();
        let next = if total > 0.0 {
            let mut target = rng.uniform() * total;
            let mut pick = n - 1;
            for (i, &d) in nearest.iter().enumerate() {
                if target < d {
                    pick = i;
                    break;
                }
                target -= d;
            }
            pick
        } else {
            // All points coincide with chosen centres: take any unchosen point.
            (0..n).find(|i| !chosen.contains(i)).unwrap_or(0)
        };
        chosen.push(next);
    }

    let mut centres = select_rows(&points, &chosen);
    let mut assignment: Vec<usize> = Vec::new();
    let mut inertia = f64::INFINITY;
    for _ in 0..max_iterations.max(1) {
        let (nearest, new_assignment) =
            squared_distances(points.clone(), centres.clone()).min_dim_with_indices(1);
        inertia = nearest.sum().into_scalar::<f64>();
        let new_assignment: Vec<usize> = new_assignment
            .into_data()
            .iter::<i64>()
            .map(|a| a as usize)
            .collect();
        if new_assignment == assignment {
            break;
        }
        assignment = new_assignment;
        // Centre k = mean of its points; an empty cluster keeps its old centre.
        let membership = one_hot(&assignment, k, &points); // [N, K]
        let counts = membership.clone().sum_dim(0).transpose(); // [K, 1]
        let sums = membership.transpose().matmul(points.clone()); // [K, D]
        let empty = counts.clone().equal_elem(0.0);
        let means = sums / counts.clamp_min(1.0);
        let [_, d] = points.dims();
        centres = means.mask_where(empty.expand([k, d]), centres);
    }
    (centres, assignment, inertia)
}

/// `[N, K]`: row `i` is the one-hot of `assignment[i]`, on `like`'s device and dtype.
fn one_hot(assignment: &[usize], k: usize, like: &Tensor<2>) -> Tensor<2> {
    let labels = Tensor::<1, Int>::from_data(
        TensorData::new(
            assignment.iter().map(|&a| a as i64).collect::<Vec<_>>(),
            [assignment.len()],
        ),
        &like.device(),
    );
    labels.one_hot::<2>(k).float().cast(like.dtype())
}

fn select_rows(points: &Tensor<2>, rows: &[usize]) -> Tensor<2> {
    let idx: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
    let idx = Tensor::<1, Int>::from_data(TensorData::new(idx, [rows.len()]), &points.device());
    points.clone().select(0, idx)
}
