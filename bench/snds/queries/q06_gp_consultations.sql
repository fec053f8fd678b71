-- Q6. GP consultations, reimbursed amounts and patients per département and month.
SELECT p.BEN_RES_DPT, p.EXE_SOI_AMD,
       SUM(p.PRS_ACT_QTE) AS n_consult,
       SUM(p.BSE_REM_MNT + p.CPL_REM_MNT) AS reimbursed_eur,
       COUNT(DISTINCT p.BEN_NIR_PSA || p.BEN_RNG_GEM) AS n_patients
FROM ER_PRS_F p
WHERE p.FLX_DIS_DTD BETWEEN DATE '{year}-01-01' AND DATE '{next}-06-01'
  AND p.EXE_SOI_DTD BETWEEN DATE '{year}-01-01' AND DATE '{year}-12-31'
  AND p.PRS_NAT_REF IN (1110, 1111) AND p.PSE_SPE_COD IN (1, 22, 23)
  AND p.DPN_QLF <> 71 AND p.CPL_MAJ_TOP < 2
GROUP BY 1, 2
