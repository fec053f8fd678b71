-- Q5. Prevalence of an active diabetes long-term condition (ALD) on 31 December,
-- by département and sex, among the living.
SELECT ben.BEN_RES_DPT, ben.BEN_SEX_COD, COUNT(DISTINCT ben.BEN_IDT_ANO) AS n
FROM IR_IMB_R i
JOIN IR_BEN_R ben ON ben.BEN_NIR_PSA = i.BEN_NIR_PSA AND ben.BEN_RNG_GEM = i.BEN_RNG_GEM
WHERE i.IMB_ETM_NAT IN (41, 43, 45)
  AND (i.MED_MTF_COD LIKE 'E10%' OR i.MED_MTF_COD LIKE 'E11%' OR i.MED_MTF_COD LIKE 'E14%')
  AND i.IMB_ALD_DTD <= DATE '{year}-12-31'
  AND (i.IMB_ALD_DTF IS NULL OR i.IMB_ALD_DTF = DATE '1600-01-01' OR i.IMB_ALD_DTF >= DATE '{year}-12-31')
  AND (ben.BEN_DCD_DTE IS NULL OR ben.BEN_DCD_DTE = DATE '1600-01-01' OR ben.BEN_DCD_DTE > DATE '{year}-12-31')
GROUP BY 1, 2
